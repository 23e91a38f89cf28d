//! A real full disk: the broker on a small tmpfs, filled under confirmed publishing.
//!
//! Needs root to mount the tmpfs (CI runs as root); elsewhere it says so and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = temp_dir("tmpfs");
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .ok()?
            .status
            .success();
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Every message in `dq`, by number, in the order they come.
async fn drain_numbers(broker: &Process) -> Vec<u64> {
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get("dq".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        out.push(u64::from_be_bytes(m.delivery.data[..8].try_into().unwrap()));
    }
    out
}

#[tokio::test]
async fn a_full_disk_loses_no_confirmed_message_and_the_broker_restarts_on_it() {
    let Some(tmpfs) = Tmpfs::mount("12m") else {
        eprintln!("skipped: cannot mount a tmpfs here (it needs root)");
        return;
    };
    let data = tmpfs.0.join("data");
    // The free-space alarm is off so that the disk really fills: what is tested is what
    // happens when writes fail.
    let args = ["--segment-mib", "1", "--disk-free-limit", "0"];
    let broker = Process::start(&args, &data);
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare("dq".into(), durable(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut confirmed = Vec::new();
    let mut refused = false;
    for i in 0u64..20_000 {
        let mut body = vec![b'x'; 2000];
        body[..8].copy_from_slice(&i.to_be_bytes());
        let pending = within(ch.basic_publish(
            "".into(),
            "dq".into(),
            Default::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .unwrap();
        // A full disk answers with a nack, or holds the publisher back (the disk alarm).
        match tokio::time::timeout(Duration::from_secs(3), pending).await {
            Ok(Ok(c)) if c.is_ack() => confirmed.push(i),
            _ => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the disk filled up");
    assert!(
        confirmed.len() > 100,
        "{} confirmed before",
        confirmed.len()
    );
    drop(conn);
    broker.kill();

    // Every confirmed message survives the kill, on a roomier copy of the data.
    let roomy = temp_dir("roomy");
    copy_dir(&data, &roomy);
    let copy = Process::start(&[], &roomy);
    let got = drain_numbers(&copy).await;
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    let missing: Vec<&u64> = confirmed
        .iter()
        .filter(|i| got.binary_search(i).is_err())
        .collect();
    assert!(missing.is_empty(), "confirmed messages lost: {missing:?}");
    copy.kill();
    let _ = std::fs::remove_dir_all(&roomy);

    // And the broker starts again in place, on the full disk, and serves what it has.
    let again = Process::start(&args, &data);
    let got = drain_numbers(&again).await;
    assert!(got.len() >= confirmed.len());
    again.kill();
}
