//! What the cluster stage produced, joined by utterance id: each utterance's cluster (its
//! expert) and split.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Result, bail};

use super::{CHECKPOINT_HASH, Clusters, Splits};

pub struct Grouping {
    pub clusters: Clusters,
    pub splits: HashMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

impl Grouping {
    /// Read `dir/clusters` and `dir/splits` (the cluster stage's output directory).
    pub fn read(dir: &Path) -> Result<Grouping> {
        let (clusters, metadata) = Clusters::read(&dir.join("clusters"))?;
        let (splits, _) = Splits::read(&dir.join("splits"))?;
        Ok(Grouping { clusters, splits: splits.ids.into_iter().zip(splits.split).collect(), metadata })
    }

    /// The number of experts.
    pub fn experts(&self) -> usize {
        self.clusters.k
    }

    /// Ids of one split, in the clusters table's order, with their row in it.
    pub fn split(&self, name: &str) -> Vec<(usize, &str)> {
        self.clusters
            .ids
            .iter()
            .enumerate()
            .filter(|(_, id)| self.splits.get(*id).is_some_and(|s| s == name))
            .map(|(i, id)| (i, id.as_str()))
            .collect()
    }

    /// The experts an utterance trains: its cluster, or its top-k clusters by probability.
    pub fn experts_of(&self, row: usize, top_k: usize) -> Vec<usize> {
        if top_k <= 1 {
            return vec![self.clusters.cluster[row] as usize];
        }
        let p = self.clusters.prob_row(row);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        idx.truncate(top_k);
        idx
    }

    /// The model that will be trained (checkpoint hash `hash`, from `dir`) must be the one
    /// the embeddings came from.
    pub fn check_checkpoint(&self, hash: &str, dir: &Path) -> Result<()> {
        match self.metadata.get(CHECKPOINT_HASH) {
            Some(h) if h != hash => bail!(
                "the clusters were made from embeddings of another checkpoint (hash {h}) than {} (hash {hash}); rerun embed with this model",
                dir.display(),
            ),
            _ => Ok(()),
        }
    }
}
