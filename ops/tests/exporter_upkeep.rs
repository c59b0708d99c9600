//! The recorder's histogram samples are folded into buckets by the upkeep
//! thread `chat_ops::exporter::install` starts, not only when someone
//! scrapes: a process nobody scrapes does not grow with every sample. The
//! test runs the upkeep every 100 ms (`install` uses 5 s) to stay short.
//! (One test per binary: the recorder is process-global.)

use std::time::Duration;

use metrics_exporter_prometheus::Matcher;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn histogram_samples_do_not_pile_up_without_a_scrape() {
    let every = Duration::from_millis(100);
    let handle = chat_ops::exporter::install_with_upkeep(
        &[(Matcher::Suffix("_seconds".into()), &[0.001, 0.01, 0.1, 1.0])],
        every,
    )
    .unwrap();
    let lag = metrics::histogram!("test_lag_seconds");
    // 12 million samples (about 190 MiB if they were all kept), in bursts
    // spread over several upkeep periods.
    let before = rss_bytes();
    let bursts = 4;
    for _ in 0..bursts {
        for i in 0..3_000_000u32 {
            lag.record(f64::from(i % 1000) / 1e4);
        }
        std::thread::sleep(3 * every);
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 120 << 20,
        "the recorder grew by {} MiB for 12M samples: upkeep is not running",
        grown >> 20
    );
    // The samples were counted, not dropped: the count holds (nearly) every
    // sample. metrics-util's lock-free bucket can miss a sample recorded
    // just as it is drained, as it can during a scrape: in a debug build
    // this tight loop lost about 4%, in release none.
    let page = handle.render();
    let count: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("test_lag_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {page}"));
    let recorded = bursts * 3_000_000;
    assert!(
        count * 10 >= recorded * 9 && count <= recorded,
        "count {count} of {recorded}"
    );
}
