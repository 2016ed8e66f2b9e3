//! The routing lab (issue 7, item 3): every routing configuration of src/routing/lab.rs on
//! synthetic clustered data with small MLP experts, trained and validated in turn (validation
//! samples come from the training centres), printed as one table: routing purity, dead experts,
//! load CV, validation accuracy, wall time.
//!
//!   cargo bench --bench routing_lab
//!
//! Optional environment: LAB_ONLY=topk,curriculum (configurations by name), LAB_EPOCHS,
//! LAB_SEED (model seed), LAB_DATA_SEED.

#[allow(dead_code)]
#[path = "lab.rs"]
mod lab;

use lab::{DataConfig, LabConfig, LabData, run, table};

fn env<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{key}={v} does not parse")))
}

fn main() {
    whisper_moe::tune_allocator();
    let mut dc = DataConfig::default();
    if let Some(s) = env("LAB_DATA_SEED") {
        dc.seed = s;
    }
    let data = LabData::new(&dc);
    println!(
        "routing lab: {} clusters in {} dims (centre std {}, spread {}), {} classes, {} train / {} val samples \
         from the same centres",
        dc.clusters,
        dc.dim,
        dc.centre_scale,
        dc.spread,
        dc.classes,
        data.train.len(),
        data.val.len()
    );
    let only: Option<String> = env("LAB_ONLY");
    let mut configs: Vec<LabConfig> = LabConfig::all()
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.split(',').any(|n| n == c.name)))
        .collect();
    for c in &mut configs {
        if let Some(v) = env("LAB_EPOCHS") {
            c.epochs = v;
        }
        if let Some(v) = env("LAB_SEED") {
            c.seed = v;
        }
    }
    let reports: Vec<_> = configs.iter().map(|c| run(c, &data)).collect();
    print!("{}", table(&reports));
    println!("\ncluster -> top-1 expert on validation:");
    for r in &reports {
        println!("  {:<16} {:?}", r.name, r.cluster_expert);
    }
}
