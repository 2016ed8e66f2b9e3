//! Routing an utterance to an expert: gate logits of its embedding, probabilities at the
//! mixture's temperature, the top-k experts; or, with `router: centroid`, the nearest cluster
//! centre of the embedding. Joint validation, evaluate and `pipeline transcribe --mixture`
//! route through [`Router`].

use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::routing::centroid::Centroids;
use crate::routing::curriculum::gate_probs;
use crate::routing::gate::Gate;
use crate::routing::stats::top_k;

/// What routes a trained mixture at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// The trained gate.
    #[default]
    Gate,
    /// The nearest cluster centre of the embedding (z-scored as the clustering saw it):
    /// needs no training, so it cannot overfit the training voices.
    Centroid,
}

/// The gate at a temperature, or the cluster centres.
pub struct Router<'a> {
    pub gate: &'a Gate,
    /// p = softmax(z / T); the top-1 expert does not depend on T, the probabilities do.
    pub temperature: f64,
    /// When set, route by the nearest centre instead of the gate (probabilities
    /// softmax(-d^2 / dim)).
    pub centroids: Option<&'a Centroids>,
}

/// Routing decisions for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    pub experts: usize,
    /// [rows, experts] row-major.
    pub probs: Vec<f32>,
}

impl Routes {
    pub fn len(&self) -> usize {
        self.probs.len() / self.experts.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.experts..(i + 1) * self.experts]
    }

    /// The k most probable experts of row i, best first.
    pub fn top_k(&self, i: usize, k: usize) -> Vec<usize> {
        top_k(self.row(i), k)
    }

    /// Each row's most probable expert.
    pub fn top1(&self) -> Vec<usize> {
        (0..self.len()).map(|i| self.top_k(i, 1)[0]).collect()
    }
}

impl Router<'_> {
    /// Route embeddings [rows, dim] (no noise: inference).
    pub fn route(&self, emb: Tensor<2>) -> Result<Routes> {
        let experts = self.gate.config().experts;
        if let Some(c) = self.centroids {
            let v: Vec<f32> = emb.into_data().try_into_vec_as()?;
            return Ok(Routes { experts: c.experts, probs: c.probs(&v, 1.0) });
        }
        let z = self.gate.forward(emb, false);
        Ok(Routes { experts, probs: gate_probs(z, None, self.temperature).into_data().try_into_vec_as()? })
    }
}
