//! Trainable parameters by path, saved and restored: training checkpoints of any module
//! (adapters, gate, the joint model), independent of burn's random parameter ids.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

struct Trainables {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Trainables {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if p.is_require_grad() {
            let t = p.val();
            let v: Vec<f32> = t.clone().into_data().try_into_vec_as().expect("f32 parameter");
            self.out.push((self.path.join("."), t.dims().to_vec(), v));
        }
    }
}

/// Save every trainable parameter of a module by path (checkpoints: adapters, gate, ...).
pub fn save_trainables<M: Module>(module: &M, path: &Path) -> Result<()> {
    let mut t = Trainables { path: Vec::new(), out: Vec::new() };
    module.visit(&mut t);
    crate::util::write_safetensors(path, &t.out, &BTreeMap::new())
}

struct Restore {
    path: Vec<String>,
    values: HashMap<String, (Vec<usize>, Vec<f32>)>,
    problems: Vec<String>,
}

impl ModuleMapper for Restore {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !p.is_require_grad() {
            return p;
        }
        let key = self.path.join(".");
        let Some((shape, v)) = self.values.remove(&key) else {
            self.problems.push(format!("no saved value for {key}"));
            return p;
        };
        let t = p.val();
        if shape != t.dims().to_vec() {
            self.problems.push(format!("{key}: saved shape {shape:?}, model {:?}", t.dims()));
            return p;
        }
        let device = t.device();
        let new = Tensor::<D>::from_data(TensorData::new(v, t.shape()), &device);
        let new = if device.is_autodiff() { new.require_grad() } else { new };
        Param::initialized(p.id, new)
    }
}

/// Load what `save_trainables` wrote into a module with the same trainable parameters.
pub fn load_trainables<M: Module>(module: M, path: &Path) -> Result<M> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let values = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (
                    v.shape().to_vec(),
                    v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                ),
            )
        })
        .collect();
    let mut r = Restore { path: Vec::new(), values, problems: Vec::new() };
    let module = module.map(&mut r);
    if let Some(k) = r.values.keys().next() {
        r.problems.push(format!("saved {k} is not a trainable parameter of the model"));
    }
    if !r.problems.is_empty() {
        bail!("{} does not match the model: {}", path.display(), r.problems.join("; "));
    }
    Ok(module)
}
