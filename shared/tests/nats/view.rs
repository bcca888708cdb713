//! A view's commits against a real nats-server: a commit of more keys than one atomic batch
//! holds is stored whole, or refused before its checkpoint moves when another writer
//! changed one of its keys, whichever part the key is in; a key it does not touch is no
//! conflict.

use std::time::Duration;

use async_nats::jetstream;
use stockwire::subjects;
use stockwire::view::{Change, ViewErrorKind, ViewStore};

use super::provisioned;

const KEYS: usize = 2_500;

fn changes(value: u64) -> Vec<(String, Change<u64>)> {
    (0..KEYS)
        .map(|i| (format!("k{i}"), Change::Put(value)))
        .collect()
}

async fn checkpoint(kv: &jetstream::kv::Store) -> Option<String> {
    kv.get(subjects::CHECKPOINT_KEY)
        .await
        .expect("checkpoint read")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test]
async fn a_commit_over_another_writers_key_is_refused_before_its_checkpoint_moves() {
    let (_server, client, js) = provisioned().await;
    let kv = js
        .get_key_value(subjects::STOCK_BUCKET)
        .await
        .expect("bucket");
    let timeout = Duration::from_secs(5);
    let mut view: ViewStore<u64> = ViewStore::open(client.clone(), subjects::STOCK_BUCKET, timeout)
        .await
        .expect("open");
    view.commit(changes(1), 10).await.expect("first commit");
    assert_eq!(view.get("k2499").await.expect("cached"), Some(1));
    assert_eq!(
        checkpoint(&kv).await.as_deref(),
        Some(r#"{"last_seq":10,"partitions":1}"#)
    );

    // A key the commit does not touch, changed by another writer, is no conflict.
    kv.put("elsewhere", "5".into()).await.expect("other writer");
    view.commit(changes(1), 15)
        .await
        .expect("a commit beside another writer's key");
    assert_eq!(
        checkpoint(&kv).await.as_deref(),
        Some(r#"{"last_seq":15,"partitions":1}"#)
    );

    // Another writer changes a key of the commit's second part (of three).
    kv.put("k1500", "7".into()).await.expect("other writer");
    let refused = view
        .commit(changes(2), 20)
        .await
        .expect_err("a key changed behind the writer's back");
    assert_eq!(refused.kind(), ViewErrorKind::Conflict, "{refused}");
    assert_eq!(
        checkpoint(&kv).await.as_deref(),
        Some(r#"{"last_seq":15,"partitions":1}"#),
        "the checkpoint stays where it was"
    );
    let other = kv.get("k1500").await.expect("read").expect("a value");
    assert_eq!(
        &other[..],
        b"7",
        "the other writer's value is not overwritten"
    );

    // Read again, the same commit is stored whole.
    view.invalidate();
    view.commit(changes(2), 20)
        .await
        .expect("commit after reading again");
    for key in ["k0", "k1500", "k2499"] {
        let value = kv.get(key).await.expect("read").expect("a value");
        assert_eq!(&value[..], b"2", "{key}");
    }
    assert_eq!(
        checkpoint(&kv).await.as_deref(),
        Some(r#"{"last_seq":20,"partitions":1}"#)
    );
}
