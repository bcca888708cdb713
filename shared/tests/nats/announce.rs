//! Announcing against a real nats-server: who announces first wins, the other is told to
//! decide again (not failed), and failures carry a kind.

use async_nats::jetstream;
use stockwire::announce::{AnnounceErrorKind, Announced, Announcer};
use stockwire::domain::{react_low_stock, Sku, StockView, WarehouseId};
use stockwire::envelope::Envelope;
use stockwire::retry::AppendErrorKind;
use stockwire::subjects;
use stockwire::testing::NatsServer;

const T: i64 = 1_795_176_000_000;
const APPLE: &str = "alerts.low_stock.ams1.apple";

fn stock(on_hand: i64, last_seq: u64) -> StockView {
    let mut view = StockView::new(
        WarehouseId::parse("ams1").unwrap(),
        Sku::parse("apple").unwrap(),
    );
    view.on_hand = on_hand;
    view.last_seq = last_seq;
    view
}

fn announcer(js: &jetstream::Context) -> Announcer {
    Announcer::new(js.clone(), Envelope::default(), subjects::LOW_STOCK_ALERTS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_to_announce_is_told_to_decide_again() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await);
    stockwire::provision::provision(&js, &stockwire::provision::Options::default())
        .await
        .expect("provision");
    let (mut first, mut second) = (announcer(&js), announcer(&js));
    // Both read that nothing was announced.
    assert_eq!(first.last(APPLE).await.unwrap(), None);
    assert_eq!(second.last(APPLE).await.unwrap(), None);
    // Both decide, on different values; the first stores its alert.
    let alert = react_low_stock(None, &stock(3, 1), 10).unwrap();
    let stored = first.announce(&alert, T).await.unwrap();
    let Announced::Stored(seq) = stored else {
        panic!("{stored:?}")
    };
    let late = react_low_stock(None, &stock(2, 2), 10).unwrap();
    assert_ne!(late.msg_id(), alert.msg_id());
    // The second is refused (wrong last sequence) and sees what the first said.
    assert_eq!(
        second.announce(&late, T).await.unwrap(),
        Announced::Superseded
    );
    let last = second.last(APPLE).await.unwrap().expect("the first alert");
    assert_eq!((last.sequence, last.says_low()), (seq, true));
    assert_eq!(react_low_stock(Some(&last), &stock(2, 2), 10), None);
    // The same decision announced twice (same msg id) is superseded too, not stored again.
    assert_eq!(
        second.announce(&alert, T).await.unwrap(),
        Announced::Superseded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_what_kind_they_are() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await);
    // No ALERTS stream: nothing can be read, and nothing stored.
    let err = announcer(&js).last(APPLE).await.unwrap_err();
    assert_eq!(err.kind(), AnnounceErrorKind::Read, "{err}");
    let alert = react_low_stock(None, &stock(3, 1), 10).unwrap();
    let err = announcer(&js).announce(&alert, T).await.unwrap_err();
    assert_eq!(
        err.kind(),
        AnnounceErrorKind::Append(AppendErrorKind::NoResponders),
        "{err}"
    );
    assert!(err.to_string().starts_with(APPLE), "{err}");
}
