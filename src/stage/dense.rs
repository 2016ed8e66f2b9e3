//! Stage dense: the single-adapter baseline. One LoRA adapter trained on every
//! expert_pretrain and joint_train utterance with the mixture's budget of optimizer steps
//! (expert pretraining + joint training), the same parameters as the experts, so that
//! "mixture vs dense" compares routing, not training time.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Stage;
use super::experts::{AdapterTask, ExpertsManifest, ExpertsParams};
use super::joint::JointSummary;
use crate::artifacts::standard_metadata;
use crate::artifacts::table::Table;
use crate::dataset::Dataset;
use crate::train::{Example, Prompting, Row, examples_from_dataset, train};

/// Inputs and outputs of stage dense.
#[derive(clap::Args, Debug, Clone)]
pub struct DensePaths {
    #[command(flatten)]
    pub base: super::ModelData,
    #[arg(long)]
    pub clusters: PathBuf,
    /// The experts stage's output (its optimizer steps count toward the budget).
    #[arg(long)]
    pub experts: PathBuf,
    /// The joint stage's output (its optimizer steps count toward the budget).
    #[arg(long)]
    pub joint: PathBuf,
    /// The embed stage's output, for the languages it detected (multilingual checkpoints).
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

/// `dense.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenseSummary {
    pub optimizer_steps: u64,
    pub budget: u64,
    pub utterances: usize,
    pub val_loss_base: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_wer_base: Option<f64>,
    pub val_wer: Option<f64>,
    pub checkpoint_hash: String,
}

impl fmt::Display for DenseSummary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x));
        let num = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
        write!(
            f,
            "dense: {} utterances, {} of {} optimizer steps; val loss {} -> {}; val WER {} -> {}",
            self.utterances,
            self.optimizer_steps,
            self.budget,
            num(self.val_loss_base),
            num(self.val_loss),
            pct(self.val_wer_base),
            pct(self.val_wer)
        )
    }
}

pub struct Dense;

impl Stage for Dense {
    const NAME: &'static str = "dense";
    const ABOUT: &'static str = "One LoRA adapter on all training utterances, with the mixture's step budget";
    type Paths = DensePaths;
    type Params = ExpertsParams;
    type Summary = DenseSummary;

    fn run(paths: &DensePaths, p: &ExpertsParams) -> Result<DenseSummary> {
        let (ck, g) = super::checkpoint_and_grouping(&paths.base.model, &paths.clusters, &p.device, p.precision, true)?;
        let dev = ck.device.clone();
        let expert_steps = ExpertsManifest::read(&paths.experts)?.total_steps();
        let joint = JointSummary::read(&paths.joint)?;
        let joint_steps = joint.optimizer_steps;
        let budget = expert_steps + joint_steps;

        let train_ids: Vec<(usize, &str)> =
            g.split("expert_pretrain").into_iter().chain(g.split("joint_train")).collect();
        let val = g.split("val");
        let ds = Dataset::open(&paths.base.dataset, &p.columns)?;
        let wanted: HashSet<String> = train_ids.iter().chain(&val).map(|(_, id)| id.to_string()).collect();
        let detected = super::experts::detected_languages(paths.embeddings.as_deref())?;
        let prompting =
            Prompting { language: p.language.as_deref(), detected: Some(&detected), task: p.task, decode_only: false };
        let by_id = examples_from_dataset(&ck, &ds, &wanted, p.train.leading_space, prompting)?;
        let examples: Vec<Example> = train_ids.iter().chain(&val).map(|(_, id)| by_id[*id].clone()).collect();
        let rows: Vec<Row> = (0..train_ids.len()).map(|i| Row { example: i, expert: Some(0), weight: 1.0 }).collect();
        let val_rows: Vec<(usize, Option<usize>)> = (0..val.len()).map(|i| (train_ids.len() + i, Some(0))).collect();

        let steps_per_epoch =
            rows.len().div_ceil(p.train.batch_size.max(1)).div_ceil(p.train.gradient_accumulation_steps.max(1));
        let mut cfg = p.train.clone();
        cfg.epochs = (budget as usize).div_ceil(steps_per_epoch.max(1)).max(1);
        cfg.max_steps = Some(budget);
        eprintln!(
            "dense: {} utterances, budget {budget} optimizer steps ({expert_steps} expert pretraining + {joint_steps} joint) = {} epochs",
            rows.len(),
            cfg.epochs
        );
        let mut model = ck.model.clone();
        dev.seed(cfg.seed);
        model.attach_lora(&p.lora, 1, &dev)?;
        let mut task = AdapterTask::new(&ck, &examples, &rows, 1, &cfg, cfg.patience.map(|_| (&val_rows[..], &p.eval)));
        let (l0, w0) = task.validate(&model, &val_rows, &p.eval)?;
        if cfg.patience.is_some() {
            task.record_base(&model)?;
        }
        let fingerprint =
            crate::util::hash_str(&format!("dense|{}|{}|{budget}|{:?}", serde_json::to_string(p)?, ck.hash, rows));
        let ckpt = paths.out.join("checkpoint");
        let split = joint.froze_encoder_adapters && model.encoder_has_adapters() && joint_steps > 0;
        let (trained, steps) = if split {
            // The mixture's treatment: its encoder adapters trained for the experts' steps and
            // were frozen for the joint stage's; so here the first `expert_steps` steps train
            // every adapter and the last `joint_steps` the decoder's (a fresh optimizer each,
            // as the two stages have).
            let phase = |steps: u64| {
                let mut c = cfg.clone();
                c.epochs = (steps as usize).div_ceil(steps_per_epoch.max(1)).max(1);
                c.max_steps = Some(steps);
                c
            };
            eprintln!(
                "dense: {expert_steps} steps with every adapter, then {joint_steps} with the encoder adapters frozen (as the joint stage)"
            );
            let first = train(model, &mut task, &phase(expert_steps).loop_config(), &ckpt.join("all"), &fingerprint)?;
            let model = first.best.unwrap_or(first.model);
            task.freeze_encoder_adapters(&cfg);
            let second =
                train(model, &mut task, &phase(joint_steps).loop_config(), &ckpt.join("frozen"), &fingerprint)?;
            let steps = first.steps + second.steps;
            (second, steps)
        } else {
            let t = train(model, &mut task, &cfg.loop_config(), &ckpt, &fingerprint)?;
            let steps = t.steps;
            (t, steps)
        };
        let model = trained.best.unwrap_or(trained.model);
        let (l1, w1) = task.validate(&model, &val_rows, &p.eval)?;
        crate::whisper::peft::save_expert(&model, 0, &p.lora, &paths.base.model, &paths.out.join("adapter"))?;
        let mut metrics = Table::default();
        for r in &task.records {
            metrics.push(vec![
                ("epoch", r.epoch.into()),
                ("train_loss", r.loss.unwrap_or(f64::NAN).into()),
                ("steps", (r.steps as i64).into()),
            ])?;
        }
        metrics.write(&paths.out.join("metrics"), &standard_metadata("dense", Some(&ck.hash)))?;
        let summary = DenseSummary {
            optimizer_steps: steps,
            budget,
            utterances: rows.len(),
            val_loss_base: l0[0],
            val_loss: l1[0],
            val_wer_base: w0[0].map(|s| s.wer()),
            val_wer: w1[0].map(|s| s.wer()),
            checkpoint_hash: ck.hash.clone(),
        };
        crate::util::write_json(&paths.out.join("dense.json"), &summary)?;
        std::fs::remove_dir_all(&ckpt).context("removing the training checkpoint")?;
        Ok(summary)
    }
}
