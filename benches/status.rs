//! Wall time of `pipeline status` on an up-to-date toy pipeline whose dep is a directory of
//! 10,000 small files: cold (no hash cache: every file is read) and warm (the stat-keyed
//! cache answers). Target: warm <= 50 ms.
//!
//!   cargo bench --bench status

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn pipeline() -> PathBuf {
    // target/release/deps/status-HASH -> target/release/pipeline
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("pipeline")
}

fn time(dir: &std::path::Path, runs: usize) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let o = Command::new(pipeline()).arg("status").current_dir(dir).output().unwrap();
            let d = t.elapsed();
            assert!(o.status.success());
            assert!(String::from_utf8_lossy(&o.stdout).contains("everything is up to date"));
            d
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let n = 10_000;
    let dir = std::env::temp_dir().join(format!("wm-bench-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    for i in 0..n {
        let sub = data.join(format!("d{:02}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        let f = sub.join(format!("f{i:05}.txt"));
        std::fs::write(&f, format!("file {i}\n").repeat(20)).unwrap();
        // Old enough that the stat cache may trust it (fresh files are re-hashed).
        let t = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(t).unwrap();
    }
    std::fs::write(
        dir.join("pipeline.yaml"),
        "stages:\n  count:\n    cmd: find data -type f | wc -l > count.txt\n    deps: [data]\n    outs: [count.txt]\n  \
         double:\n    cmd: cat count.txt count.txt > double.txt\n    deps: [count.txt]\n    outs: [double.txt]\n",
    )
    .unwrap();
    let o = Command::new(pipeline()).args(["run", "all"]).current_dir(&dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cache = dir.join(".pipeline/hash-cache.tsv");
    let cold: Vec<Duration> = (0..3)
        .map(|_| {
            let _ = std::fs::remove_file(&cache);
            time(&dir, 1)[0]
        })
        .collect();
    time(&dir, 1); // fill the cache
    let warm = time(&dir, 9);
    println!("pipeline status, {n} files in the dep directory (2 stages, up to date):");
    println!("  cold (no hash cache, every file read): {:.1} ms (median of 3)", median(cold));
    println!("  warm (stat-keyed hash cache):          {:.1} ms (median of 9)", median(warm));
    let _ = std::fs::remove_dir_all(&dir);
}
