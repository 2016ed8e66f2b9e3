//! Routing statistics for logs and diagnostics, on plain numbers (probabilities [B, E]
//! row-major, natural logarithms).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoutingStats {
    /// Mean over utterances of -sum_e p log p.
    pub entropy: f64,
    /// Mean gate probability per expert.
    pub importance: Vec<f64>,
    /// Share of utterances whose top-1 expert is e.
    pub load_top1: Vec<f64>,
    /// Share of top-k assignments going to e (rescued ones included).
    pub load_topk: Vec<f64>,
    /// Coefficient of variation (population std / mean) of the top-k load.
    pub load_cv: f64,
    /// Gini coefficient of the top-k load.
    pub load_gini: f64,
    /// Mean renormalised weight of each utterance's top-1 expert.
    pub selection_confidence: f64,
    /// Experts with no top-k assignment.
    pub dead_experts: usize,
    pub rescued: usize,
    /// The least-used expert's share of the batch's utterances (filled in by the caller, which
    /// knows the rescues).
    pub min_usage: f64,
}

pub fn entropy(p: &[f32], experts: usize) -> f64 {
    let rows = p.len() / experts;
    let s: f64 = p.iter().map(|&x| x as f64).filter(|&x| x > 0.0).map(|x| -x * x.ln()).sum();
    s / rows.max(1) as f64
}

/// Population coefficient of variation.
pub fn cv(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

/// Gini coefficient: sum_i sum_j |x_i - x_j| / (2 n^2 mean).
pub fn gini(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let s: f64 = x.iter().flat_map(|a| x.iter().map(move |b| (a - b).abs())).sum();
    s / (2.0 * n * n * mean)
}

/// Indices of the k largest values of a row (ties to the lower index), largest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Statistics of a batch: probabilities `p` [B, E], the experts each utterance was routed to
/// (top-k plus rescues) and the number of rescued assignments.
pub fn routing_stats(p: &[f32], experts: usize, assigned: &[Vec<usize>], k: usize, rescued: usize) -> RoutingStats {
    let rows = p.len() / experts;
    let mut importance = vec![0.0; experts];
    let mut load_top1 = vec![0.0; experts];
    let mut load_topk = vec![0.0; experts];
    let mut confidence = 0.0;
    for r in 0..rows {
        let row = &p[r * experts..(r + 1) * experts];
        for e in 0..experts {
            importance[e] += row[e] as f64 / rows as f64;
        }
        let top = top_k(row, k);
        load_top1[top[0]] += 1.0 / rows as f64;
        let denom: f64 = top.iter().map(|&e| row[e] as f64).sum();
        confidence += row[top[0]] as f64 / denom.max(1e-12) / rows as f64;
    }
    let total: usize = assigned.iter().map(Vec::len).sum();
    for a in assigned {
        for &e in a {
            load_topk[e] += 1.0 / total.max(1) as f64;
        }
    }
    RoutingStats {
        entropy: entropy(p, experts),
        load_cv: cv(&load_topk),
        load_gini: gini(&load_topk),
        dead_experts: load_topk.iter().filter(|&&l| l == 0.0).count(),
        importance,
        load_top1,
        load_topk,
        selection_confidence: confidence,
        rescued,
        min_usage: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_by_hand() {
        // Entropy of (0.5, 0.5) is ln 2; of (1, 0) is 0; the mean is ln2 / 2.
        let e = entropy(&[0.5, 0.5, 1.0, 0.0], 2);
        assert!((e - std::f64::consts::LN_2 / 2.0).abs() < 1e-12);
        // CV of (1, 3): mean 2, population std 1 -> 0.5. Gini of (1, 3): |1-3|*2 / (2*4*2) = 0.25.
        assert!((cv(&[1.0, 3.0]) - 0.5).abs() < 1e-12);
        assert!((gini(&[1.0, 3.0]) - 0.25).abs() < 1e-12);
        // All load on one of four experts: Gini (n-1)/n = 0.75; equal load: 0.
        assert!((gini(&[0.0, 0.0, 0.0, 1.0]) - 0.75).abs() < 1e-12);
        assert_eq!(gini(&[0.25; 4]), 0.0);
        assert!((cv(&[0.0, 0.0, 0.0, 1.0]) - 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn batch_statistics() {
        // Two utterances, three experts, k = 2.
        let p = [0.6f32, 0.3, 0.1, 0.2, 0.2, 0.6];
        let assigned = vec![vec![0, 1], vec![2, 0]];
        let s = routing_stats(&p, 3, &assigned, 2, 0);
        assert!((s.importance[0] - 0.4).abs() < 1e-7 && (s.importance[2] - 0.35).abs() < 1e-7);
        assert_eq!(s.load_top1, vec![0.5, 0.0, 0.5]);
        assert_eq!(s.load_topk, vec![0.5, 0.25, 0.25]);
        // Confidence: 0.6/0.9 and 0.6/0.8 -> mean.
        assert!((s.selection_confidence - (0.6 / 0.9 + 0.6 / 0.8) / 2.0).abs() < 1e-6);
        assert_eq!(s.dead_experts, 0);
        assert_eq!(top_k(&[0.2, 0.2, 0.6], 2), vec![2, 0]);
    }
}
