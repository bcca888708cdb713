//! `stockwire bench` launches `stockwire-bench` from its own directory: the flags as given,
//! the connection settings in the environment, and a clear exit 1 when it is not there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{code, stderr};

/// A directory holding a copy of the `stockwire` binary, so `current_exe()` is in it.
fn stockwire_alone() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("stockwire");
    std::fs::copy(env!("CARGO_BIN_EXE_stockwire"), &exe).expect("copy stockwire");
    (dir, exe)
}

/// Runs `exe` with `args` and a clean connection environment. A binary just written can
/// be busy for a moment while another test's child inherits it (ETXTBSY): try again.
fn run(exe: &Path, args: &[&str]) -> Output {
    for _ in 0..50 {
        let result = Command::new(exe)
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("NATS_USER")
            .env_remove("NATS_PASSWORD")
            .env_remove("NATS_CREDS")
            .env_remove("STOCKWIRE_HEADER_PREFIX")
            .output();
        match result {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.expect("run stockwire"),
        }
    }
    panic!("{} stayed busy", exe.display());
}

#[test]
fn bench_without_its_binary_is_exit_1_naming_where_it_looked() {
    let (dir, exe) = stockwire_alone();
    let out = run(&exe, &["bench", "--quick"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let looked = dir.path().join("stockwire-bench");
    assert!(
        stderr(&out).contains(&looked.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[cfg(unix)]
#[test]
fn bench_passes_its_flags_and_the_connection_to_stockwire_bench() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, exe) = stockwire_alone();
    let fake = dir.path().join("stockwire-bench");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         echo \"args: $*\"\n\
         echo \"url: $NATS_URL user: $NATS_USER password: $NATS_PASSWORD prefix: $STOCKWIRE_HEADER_PREFIX\"\n\
         exit 7\n",
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let out = run(
        &exe,
        &[
            "--nats-url",
            "nats://example:4333",
            "--user",
            "admin",
            "--password",
            "secret",
            "--header-prefix",
            "acme",
            "--json",
            "bench",
            "--quick",
            "--rounds",
            "2",
            "--report",
            "out.json",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), Some(7), "its exit code: {}", stderr(&out));
    assert!(
        stdout.contains("args: --json --quick --rounds 2 --report out.json"),
        "{stdout}"
    );
    assert!(
        stdout.contains("url: nats://example:4333 user: admin password: secret prefix: acme"),
        "{stdout}"
    );

    // Its own help, not the launcher's.
    let out = run(&exe, &["bench", "--help"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("args: --help"),
        "{}",
        stderr(&out)
    );
}
