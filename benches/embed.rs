//! Stage embed throughput and memory: clips/s and peak RSS for 200 and 2,000 clips (the demo
//! corpus repeated under new ids). Memory must not grow with the dataset: RSS(2000) /
//! RSS(200) <= 1.2.
//!
//!   WHISPER_MOE_SHARED=../shared cargo bench --bench embed

use std::process::Command;

fn main() {
    let shared = std::env::var_os("WHISPER_MOE_SHARED").map(std::path::PathBuf::from).expect("set WHISPER_MOE_SHARED");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("stage-embed");
    let demo: Vec<csv::StringRecord> =
        csv::Reader::from_path(root.join("data/demo/metadata.csv")).unwrap().records().map(|r| r.unwrap()).collect();
    let dir = std::env::temp_dir().join(format!("wm-bench-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rss = Vec::new();
    for n in [200usize, 2000] {
        let csv_path = dir.join(format!("metadata-{n}.csv"));
        let mut w = csv::Writer::from_path(&csv_path).unwrap();
        w.write_record(["id", "file_name", "transcription", "domain"]).unwrap();
        for i in 0..n {
            let r = &demo[i % demo.len()];
            let file = root.join("data/demo").join(&r[0]);
            w.write_record([&format!("clip{i:05}"), file.to_str().unwrap(), &r[1], &r[2]]).unwrap();
        }
        w.flush().unwrap();
        let o = Command::new(&exe)
            .args([
                "--dataset",
                csv_path.to_str().unwrap(),
                "--model",
                shared.join("models/whisper-tiny.en").to_str().unwrap(),
            ])
            .args([
                "--out",
                dir.join(format!("emb-{n}")).to_str().unwrap(),
                "--rejected",
                dir.join(format!("rej-{n}")).to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        let line = err.lines().find(|l| l.starts_with("embedded")).unwrap().to_string();
        let mb: f64 = line.split("peak RSS ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        println!("{n:>5} clips: {line}");
        rss.push(mb);
    }
    println!("peak RSS ratio 2000 / 200 clips: {:.2} (target <= 1.2)", rss[1] / rss[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
