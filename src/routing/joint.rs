//! Joint training's model and loss: the gate and every expert's adapters together, and the
//! routing curriculum's loss of a batch (soft -> top-k soft -> top-k hard, annealed
//! temperature, exploration noise, balance loss, the min-usage rescue). The math is in
//! ../shared/docs/spec.md, "Joint training"; the loop that runs it is the joint stage's
//! (`stage::joint`), in the project's one training loop.

use burn::nn::Linear;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::balance::{Balance, balance_loss, z_loss};
use super::curriculum::{NoiseConfig, gate_probs, noise, route, row_weights};
use super::gate::Gate;
use super::schedule::{Phase, Schedule, ScheduleUnit, progress, temperature};
use super::stats::{RoutingStats, routing_stats};
use crate::train::{EncoderCache, Example, utterance_losses};
use crate::whisper::Checkpoint;
use crate::whisper::model::Whisper;
use anyhow::Result;

crate::params! {
    /// The routing curriculum's parameters (names and defaults of the source guide).
    pub struct RoutingParams {
        /// Epochs (from 0) before this one route softly to every expert.
        pub soft_routing_epochs: usize = 3,
        /// Epochs before this one (and after the soft ones) use top-k soft weights; the rest
        /// top-k hard.
        pub topk_routing_epochs: usize = 6,
        pub top_k_experts: usize = 2,
        pub routing_temperature_start: f64 = 2.0,
        pub routing_temperature_end: f64 = 0.5,
        pub temperature_schedule: Schedule = Schedule::Linear,
        pub temperature_unit: ScheduleUnit = ScheduleUnit::Epoch,
        pub noise: NoiseConfig = NoiseConfig::default(),
        pub balance: Balance = Balance::KlUniform,
        pub load_balance_coef: f64 = 0.1,
        pub z_loss_coef: f64 = 0.0,
        pub min_expert_usage_fraction: f64 = 0.05,
        /// Soft phase: experts whose batch-mean weight is below this are skipped.
        pub soft_skip_below: f32 = 1e-4,
    }
}

impl RoutingParams {
    /// The phase of epoch `epoch` (0-based).
    pub fn phase(&self, epoch: usize) -> Phase {
        Phase::of_epoch(epoch, self.soft_routing_epochs, self.topk_routing_epochs)
    }

    /// The temperature at batch `batch` of `batches` in epoch `epoch` (0-based), and the
    /// schedule's progress there.
    pub fn temperature_at(&self, epoch: usize, batch: usize, batches: usize) -> (f64, f64) {
        let prog = progress(self.temperature_unit, epoch, batch, batches, self.topk_routing_epochs);
        (
            temperature(self.temperature_schedule, self.routing_temperature_start, self.routing_temperature_end, prog),
            prog,
        )
    }

    /// The temperature after `epochs` epochs: what inference uses.
    pub fn final_temperature(&self, epochs: usize) -> f64 {
        self.temperature_at(epochs, 0, 1).0
    }
}

/// Everything joint training optimises.
#[derive(Module, Debug)]
pub struct JointModel {
    pub whisper: Whisper,
    pub gate: Gate,
    /// The learned noise std network (noisy top-k gating), when configured.
    pub noise: Option<Linear>,
}

impl JointModel {
    pub fn experts(&self) -> usize {
        self.gate.config().experts
    }

    /// Gate logits [b, E] of raw embeddings (and the noise network's output, if any).
    pub fn logits(&self, emb: Tensor<2>, train: bool) -> (Tensor<2>, Option<Tensor<2>>) {
        let z = self.gate.forward(emb.clone(), train);
        (z, self.noise.as_ref().map(|n| n.forward(emb)))
    }
}

/// One logged row (a step, or an epoch summary).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LogRow {
    pub kind: String,
    pub epoch: usize,
    pub step: u64,
    pub phase: String,
    pub temperature: f64,
    pub main_loss: f64,
    pub balance_loss: f64,
    pub z_loss: f64,
    #[serde(flatten)]
    pub stats: RoutingStats,
    pub learning_rate: f64,
    pub val_loss: Option<f64>,
    pub val_wer: Option<f64>,
}

/// The data of a joint run: examples, their embeddings, which train and validate.
pub struct JointData {
    pub examples: Vec<Example>,
    /// Row-major [examples, dim] embeddings (the gate's input).
    pub embeddings: Vec<f32>,
    pub dim: usize,
    pub train: Vec<usize>,
    /// (example, cluster) of validation utterances.
    pub val: Vec<(usize, Option<usize>)>,
}

impl JointData {
    pub fn emb(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        let v: Vec<f32> =
            idx.iter().flat_map(|&i| self.embeddings[i * self.dim..(i + 1) * self.dim].iter().copied()).collect();
        Tensor::from_data(TensorData::new(v, [idx.len(), self.dim]), device)
    }
}

/// Loss of one batch: the total (differentiable), its parts and the routing statistics.
pub struct BatchLoss {
    pub total: Tensor<1>,
    pub main: f64,
    pub balance: f64,
    pub z: f64,
    pub stats: RoutingStats,
}

/// The curriculum's loss on utterances `batch` (indices into `d`) in `phase` at temperature
/// `temp`: mean over utterances of sum over routed experts of w_e L_e, plus the balance and
/// z-losses. `train` adds exploration noise, the rescue and dropout; `pack` packs the rows of
/// each expert into shared 30-s windows when adapters touch the encoder.
#[allow(clippy::too_many_arguments)]
pub fn batch_loss(
    ck: &Checkpoint,
    m: &JointModel,
    cache: &mut EncoderCache,
    d: &JointData,
    batch: &[usize],
    phase: Phase,
    temp: f64,
    prog: f64,
    p: &RoutingParams,
    train: bool,
    pack: bool,
) -> Result<BatchLoss> {
    let device = m.whisper.decoder.embed_tokens.val().device();
    let e = m.experts();
    let b = batch.len();
    let (z, learned) = m.logits(d.emb(batch, &device), train);
    let n = if train { noise(&p.noise, [b, e], prog, learned, &device) } else { None };
    let probs = gate_probs(z.clone(), n, temp); // [b, E]
    let pv: Vec<f32> = probs.clone().into_data().try_into_vec_as()?;
    let rescue = if train { p.min_expert_usage_fraction } else { 0.0 };
    let routing = route(&pv, e, phase, p.top_k_experts, rescue, p.soft_skip_below);
    let weights = row_weights(probs.clone(), &routing, phase, p.top_k_experts); // [R]
    let rows: Vec<(usize, Option<usize>)> = routing.rows.iter().map(|&(i, x)| (batch[i], Some(x))).collect();
    let losses = utterance_losses(ck, &m.whisper, cache, &d.examples, &rows, train, pack); // [R]
    let main = (weights * losses).sum() / b as f32;
    let bal = balance_loss(p.balance, probs);
    let zl = z_loss(z);
    let total = main.clone() + bal.clone() * p.load_balance_coef + zl.clone() * p.z_loss_coef;
    // Diagnostics count an assignment only when its weight matters (>= 1e-3): a collapsed
    // top-2 gate still names a second expert with weight ~1e-20 (see routing::lab).
    let live: Vec<Vec<usize>> = routing
        .assigned
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let row = &pv[i * e..(i + 1) * e];
            let denom: f32 = routing.topk[i].iter().map(|&x| row[x]).sum();
            a.iter().copied().filter(|&x| row[x] / denom.max(1e-12) >= 1e-3).collect()
        })
        .collect();
    let mut stats = routing_stats(&pv, e, &live, p.top_k_experts, routing.rescued);
    // Usage floor actually given (rescues included): the least-used expert's share of the batch.
    stats.min_usage = (0..e)
        .map(|x| routing.assigned.iter().filter(|a| a.contains(&x)).count() as f64 / b as f64)
        .fold(1.0, f64::min);
    Ok(BatchLoss {
        total,
        main: main.into_scalar::<f32>() as f64,
        balance: bal.into_scalar::<f32>() as f64,
        z: zl.into_scalar::<f32>() as f64,
        stats,
    })
}

/// The epoch's summary row from its step rows: means, and the epoch's load statistics.
pub fn epoch_row(epoch: usize, step: u64, phase: Phase, steps: &[LogRow]) -> LogRow {
    let refs: Vec<&LogRow> = steps.iter().collect();
    let n = refs.len().max(1) as f64;
    let epoch_load: Vec<f64> = mean_vec(&refs, |r| &r.stats.load_topk);
    LogRow {
        kind: "epoch".into(),
        epoch,
        step,
        phase: phase.name().into(),
        temperature: refs.last().map(|r| r.temperature).unwrap_or(0.0),
        main_loss: refs.iter().map(|r| r.main_loss).sum::<f64>() / n,
        balance_loss: refs.iter().map(|r| r.balance_loss).sum::<f64>() / n,
        z_loss: refs.iter().map(|r| r.z_loss).sum::<f64>() / n,
        stats: RoutingStats {
            entropy: refs.iter().map(|r| r.stats.entropy).sum::<f64>() / n,
            importance: mean_vec(&refs, |r| &r.stats.importance),
            load_top1: mean_vec(&refs, |r| &r.stats.load_top1),
            load_cv: super::stats::cv(&epoch_load),
            load_gini: super::stats::gini(&epoch_load),
            dead_experts: epoch_load.iter().filter(|&&l| l == 0.0).count(),
            load_topk: epoch_load,
            selection_confidence: refs.iter().map(|r| r.stats.selection_confidence).sum::<f64>() / n,
            rescued: refs.iter().map(|r| r.stats.rescued).sum(),
            min_usage: refs.iter().map(|r| r.stats.min_usage).fold(1.0, f64::min),
        },
        learning_rate: refs.last().map(|r| r.learning_rate).unwrap_or(0.0),
        ..Default::default()
    }
}

fn mean_vec(rows: &[&LogRow], f: impl Fn(&LogRow) -> &Vec<f64>) -> Vec<f64> {
    let n = rows.len().max(1) as f64;
    let len = rows.first().map(|r| f(r).len()).unwrap_or(0);
    (0..len).map(|i| rows.iter().map(|r| f(r)[i]).sum::<f64>() / n).collect()
}
