//! The routing curriculum's clock: which phase an epoch is in, and the temperature.
//! Reference: ../shared/docs/spec.md, "Joint training: the routing curriculum".

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every expert, weighted by the gate probability.
    Soft,
    /// The top-k experts, weights renormalised over them.
    TopkSoft,
    /// The same top-k experts with hard weights 1/k and a straight-through gradient.
    TopkHard,
}

impl Phase {
    /// Phase of epoch `e` (0-based).
    pub fn of_epoch(e: usize, soft_routing_epochs: usize, topk_routing_epochs: usize) -> Phase {
        if e < soft_routing_epochs {
            Phase::Soft
        } else if e < topk_routing_epochs {
            Phase::TopkSoft
        } else {
            Phase::TopkHard
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Phase::Soft => "soft",
            Phase::TopkSoft => "topk_soft",
            Phase::TopkHard => "topk_hard",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Linear,
    Cosine,
    Exponential,
    /// Three plateaus at the exponential schedule's values for progress 0, 1/2, 1
    /// (5 -> 2.24 -> 1 for 5 -> 1, the seed's "5.0 -> 2.0 -> 1.0" step schedule).
    Step,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleUnit {
    #[default]
    Epoch,
    Step,
}

/// Temperature from `start` to `end` at `progress` in [0, 1].
pub fn temperature(schedule: Schedule, start: f64, end: f64, progress: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    match schedule {
        Schedule::Linear => start + (end - start) * p,
        Schedule::Cosine => end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        Schedule::Exponential => start * (end / start).powf(p),
        Schedule::Step => {
            let level = (p * 3.0).floor().min(2.0);
            start * (end / start).powf(level / 2.0)
        }
        Schedule::Constant => start,
    }
}

/// Progress of the anneal: min(1, e / topk_routing_epochs) per epoch, or the same in steps.
pub fn progress(
    unit: ScheduleUnit,
    epoch: usize,
    step_in_epoch: usize,
    steps_per_epoch: usize,
    topk_routing_epochs: usize,
) -> f64 {
    if topk_routing_epochs == 0 {
        return 1.0;
    }
    let p = match unit {
        ScheduleUnit::Epoch => epoch as f64 / topk_routing_epochs as f64,
        ScheduleUnit::Step => {
            (epoch * steps_per_epoch + step_in_epoch) as f64 / (topk_routing_epochs * steps_per_epoch.max(1)) as f64
        }
    };
    p.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn phases_by_epoch() {
        let p: Vec<Phase> = (0..8).map(|e| Phase::of_epoch(e, 3, 6)).collect();
        use Phase::*;
        assert_eq!(p, [Soft, Soft, Soft, TopkSoft, TopkSoft, TopkSoft, TopkHard, TopkHard]);
    }

    #[test]
    fn temperatures_by_hand() {
        // Defaults 2.0 -> 0.5 over topk_routing_epochs = 6, per epoch.
        let t = |s, e| temperature(s, 2.0, 0.5, progress(ScheduleUnit::Epoch, e, 0, 10, 6));
        close(t(Schedule::Linear, 0), 2.0);
        close(t(Schedule::Linear, 3), 1.25);
        close(t(Schedule::Linear, 6), 0.5);
        close(t(Schedule::Linear, 9), 0.5);
        // cosine at 1/2: 0.5 + 1.5 * 0.5 * (1 + cos(pi/2)) = 1.25; at 1/3: 0.5 + 0.75 * 1.5 = 1.625
        close(t(Schedule::Cosine, 3), 1.25);
        close(t(Schedule::Cosine, 2), 0.5 + 0.75 * 1.5);
        // exponential at 1/2: 2 * (1/4)^(1/2) = 1
        close(t(Schedule::Exponential, 3), 1.0);
        close(t(Schedule::Exponential, 6), 0.5);
        // step: 2.0 for progress < 1/3, 1.0 until 2/3, then 0.5
        close(t(Schedule::Step, 1), 2.0);
        close(t(Schedule::Step, 2), 1.0);
        close(t(Schedule::Step, 3), 1.0);
        close(t(Schedule::Step, 4), 0.5);
        close(t(Schedule::Constant, 5), 2.0);
        // Per step: epoch 1, step 5 of 10 -> 15/60 = 0.25 -> linear 1.625
        close(temperature(Schedule::Linear, 2.0, 0.5, progress(ScheduleUnit::Step, 1, 5, 10, 6)), 1.625);
    }
}
