//! The page in a real browser: headless Chromium driven through WebDriver (chromedriver on
//! a free port), against the real nats-server, stock-projector and low-stock-watcher, as
//! a person uses it. Without Chromium the test says so loudly and passes, except under
//! `CI=true`, where it fails: `scripts/setup` installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::{event, Stack};

/// How long the page may take to show a change (two shared cores).
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

/// Chromium and chromedriver, where the distribution puts them (or on PATH).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
    };
    Some((
        find(&["chromium", "chromium-browser", "google-chrome"])?,
        find(&["chromedriver"])?,
    ))
}

struct Driver {
    process: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start(chromium: &Path, chromedriver: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let process = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(anyhow!("chromedriver did not listen on {port} within 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir()?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("opening a WebDriver session")?;
        Ok(Self {
            process,
            client,
            _profile: profile,
        })
    }

    /// Waits until the element at `css` shows `wanted` (as `what` says it).
    async fn shows(
        &self,
        css: &str,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + SHOWN_WITHIN;
        let mut last = String::from("(not on the page)");
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if wanted(&text) {
                        return Ok(text);
                    }
                    last = text;
                }
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{what}: `{css}` shows {last:?} after {SHOWN_WITHIN:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an element matches `css`.
    async fn has(&self, css: &str, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + SHOWN_WITHIN;
        while self.client.find(Locator::Css(css)).await.is_err() {
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "{what}: nothing matches `{css}` after {SHOWN_WITHIN:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Saves what the browser shows, under `target/`.
    async fn screenshot(&self, name: &str) -> Option<PathBuf> {
        let png = self.client.screenshot().await.ok()?;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(name);
        std::fs::write(&path, png).ok()?;
        Some(path)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_follows_the_stock_and_comes_back_after_a_restart() {
    let Some((chromium, chromedriver)) = browser() else {
        let advice = "no Chromium and chromedriver on PATH: run scripts/setup as root \
                      (apt-get install --no-install-recommends chromium chromium-driver)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{advice}");
        }
        eprintln!("\n*** SKIPPED the browser test: {advice} ***\n");
        return;
    };
    let mut stack = Stack::start().await;
    let driver = Driver::start(&chromium, &chromedriver)
        .await
        .expect("a headless Chromium");
    let outcome = drive(&mut stack, &driver).await;
    if let Err(e) = outcome {
        let shot = driver.screenshot("dashboard-test-failure.png").await;
        panic!("{e:#}\nscreenshot: {shot:?}");
    }
    let _ = driver.client.clone().close().await;
}

async fn drive(stack: &mut Stack, driver: &Driver) -> anyhow::Result<()> {
    stack.record(event("received", "ams1", "apple", 30)).await;
    stack.record(event("received", "nyc1", "pear", 50)).await;
    let page = format!("http://{}/", stack.addr);
    driver.client.goto(&page).await?;
    driver
        .shows("#status", "the page is live", |t| t == "live")
        .await?;
    let apple = r#"tr[data-key="ams1.apple"]"#;
    driver
        .shows(&format!("{apple} .on-hand"), "the seeded stock", |t| {
            t == "30"
        })
        .await?;

    // A sale changes the row without a reload.
    stack.record(event("sold", "ams1", "apple", 4)).await;
    driver
        .shows(&format!("{apple} .on-hand"), "the sale", |t| t == "26")
        .await?;

    // A threshold above the stock: the row turns low, and the alert comes in.
    let thresholds = stack
        .js
        .get_key_value(stockwire::subjects::THRESHOLDS_BUCKET)
        .await?;
    thresholds
        .put("ams1.apple", r#"{"low_stock_below":40}"#.into())
        .await?;
    driver
        .has(&format!("{apple}.low"), "the row is low")
        .await?;
    driver
        .shows(&format!("{apple} .threshold"), "the threshold", |t| {
            t == "40"
        })
        .await?;
    driver
        .has(
            r#"#alerts li[data-type="stock.low"][data-key="ams1.apple"]"#,
            "the stock.low alert in the feed",
        )
        .await?;

    // The filter: only nyc1's rows.
    let select = driver.client.find(Locator::Css("#warehouse")).await?;
    select.select_by_value("nyc1").await?;
    driver
        .has(r#"tr[data-key="nyc1.pear"]"#, "nyc1's row after the filter")
        .await?;
    let deadline = Instant::now() + SHOWN_WITHIN;
    while driver.client.find(Locator::Css(apple)).await.is_ok() {
        if Instant::now() > deadline {
            return Err(anyhow!("ams1's row is still shown with the filter on nyc1"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The address says so: opened again, the page starts filtered.
    let filtered = driver.client.current_url().await?;
    if !filtered.as_str().ends_with("/?warehouse=nyc1") {
        return Err(anyhow!("the filtered page's address is {filtered}"));
    }
    driver.client.goto(filtered.as_str()).await?;
    driver
        .has(r#"tr[data-key="nyc1.pear"]"#, "nyc1's row, opened filtered")
        .await?;
    if driver.client.find(Locator::Css(apple)).await.is_ok() {
        return Err(anyhow!(
            "ams1's row is shown on a page opened filtered on nyc1"
        ));
    }

    // The product page: one point of the chart per event.
    driver
        .client
        .goto(&format!("http://{}/product/ams1/apple", stack.addr))
        .await?;
    driver.has("svg polyline", "the chart").await?;
    let points = driver
        .client
        .find(Locator::Css("svg polyline"))
        .await?
        .attr("points")
        .await?
        .unwrap_or_default();
    let count = points.split_whitespace().count();
    if count != 2 {
        return Err(anyhow!(
            "the chart has {count} points for 2 events: {points:?}"
        ));
    }
    driver
        .shows("#recent", "the recent events", |t| t.contains("stock.sold"))
        .await?;

    // The dashboard restarts while a sale happens: the page says so, comes back by
    // itself, and shows the sale.
    driver.client.goto(&page).await?;
    driver
        .shows("#status", "live again", |t| t == "live")
        .await?;
    let js = stack.js.clone();
    stack
        .restart_dashboard(async {
            let out = stockwire::envelope::Envelope::default().encode(
                &event("sold", "ams1", "apple", 1),
                &stockwire::envelope::EventMeta {
                    msg_id: uuid::Uuid::new_v4().to_string(),
                    timestamp_ms: super::chrono_now(),
                },
            );
            js.publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .expect("publish")
                .await
                .expect("ack");
            driver
                .shows("#status", "reconnecting while it is down", |t| {
                    t == "reconnecting"
                })
                .await
        })
        .await?;
    driver
        .shows(
            &format!("{apple} .on-hand"),
            "the sale made while it was down",
            |t| t == "25",
        )
        .await?;
    driver
        .shows("#status", "live after the restart", |t| t == "live")
        .await?;
    driver.screenshot("dashboard.png").await;
    Ok(())
}
