//! Stage cluster: embeddings -> expert groups (`clusters/`), stratified splits (`splits/`)
//! and a quality summary (`summary.json`), all under one output directory. The algorithms,
//! noise handling and splits are in [`crate::cluster`].

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Stage;
use crate::artifacts::{Embeddings, write_dataset};
use crate::cluster::{ClusterParams, ClusterSummary, cluster_embeddings, output_metadata, report};

/// Inputs and outputs of stage cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterPaths {
    /// The embeddings dataset (stage embed).
    #[arg(long)]
    pub embeddings: PathBuf,
    /// Output directory: clusters/, splits/ and summary.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub struct Cluster;

/// The summary, printed as the cluster report.
pub struct Report(pub ClusterSummary);

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", report(&self.0).trim_end())
    }
}

impl Stage for Cluster {
    const NAME: &'static str = "cluster";
    const ABOUT: &'static str = "Cluster utterance embeddings into expert groups and split them";
    type Paths = ClusterPaths;
    type Params = ClusterParams;
    type Summary = Report;

    fn run(paths: &ClusterPaths, p: &ClusterParams) -> Result<Report> {
        let (emb, meta) = Embeddings::read(&paths.embeddings)?;
        let o = cluster_embeddings(&emb, p)?;
        let m = output_metadata(&meta, p, o.clusters.k);
        std::fs::create_dir_all(&paths.out).with_context(|| format!("cannot create {}", paths.out.display()))?;
        write_dataset(&paths.out.join("clusters"), &[o.clusters.to_batch()?], &m)?;
        write_dataset(&paths.out.join("splits"), &[o.splits.to_batch()?], &m)?;
        crate::util::write_json(&paths.out.join("summary.json"), &o.summary)?;
        Ok(Report(o.summary))
    }
}
