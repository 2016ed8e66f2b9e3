//! The multi-expert LoRA layer: every expert's A and B in one module, applied row by row.

use burn::module::Param;
use burn::prelude::*;

/// Which expert's adapter each row of a batch uses.
#[derive(Debug, Clone)]
pub struct Route {
    /// [rows] expert index per row (0 for rows without an expert; `active` masks them out).
    pub expert: Tensor<1, Int>,
    /// [rows, 1, 1]: 1.0 where the row uses its expert, 0.0 for the base model.
    pub active: Option<Tensor<3>>,
    /// Apply LoRA dropout (training only).
    pub train: bool,
}

impl Route {
    /// Every row uses expert `e`.
    pub fn all(e: usize, rows: usize, device: &Device) -> Route {
        Route::per_row(&vec![Some(e); rows], device)
    }

    /// Row i uses `experts[i]`, or the base model when None.
    pub fn per_row(experts: &[Option<usize>], device: &Device) -> Route {
        let idx: Vec<i64> = experts.iter().map(|e| e.unwrap_or(0) as i64).collect();
        let any_base = experts.iter().any(Option::is_none);
        let active = any_base.then(|| {
            let m: Vec<f32> = experts.iter().map(|e| if e.is_some() { 1.0 } else { 0.0 }).collect();
            Tensor::<1>::from_data(TensorData::new(m, [experts.len()]), device).reshape([experts.len(), 1, 1])
        });
        Route { expert: Tensor::from_data(TensorData::new(idx, [experts.len()]), device), active, train: false }
    }

    pub fn training(mut self, train: bool) -> Route {
        self.train = train;
        self
    }

    /// The route of rows `index` (e.g. the rows sharing one encoder pass).
    pub fn select(&self, index: Tensor<1, Int>) -> Route {
        Route {
            expert: self.expert.clone().select(0, index.clone()),
            active: self.active.clone().map(|a| a.select(0, index)),
            train: self.train,
        }
    }
}

/// Inverted dropout with probability `p`. The mask comes from a SplitMix64 stream seeded by
/// one draw of the device's RNG (so it is reproducible under `device.seed`), since drawing
/// every element from burn's RNG cost a tenth of a training step on 1500-frame inputs.
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64) -> Tensor<D> {
    let device = x.device();
    let shape = x.shape();
    let n = shape.num_elements();
    let u: Vec<f32> = Tensor::<1>::random([2], burn::tensor::Distribution::Default, &device)
        .into_data()
        .try_into_vec_as()
        .expect("f32");
    let mut state = ((u[0] as f64 * 2f64.powi(31)) as u64) << 31 | (u[1] as f64 * 2f64.powi(31)) as u64;
    let threshold = ((1.0 - p) * (1u64 << 53) as f64) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if (z >> 11) < threshold { scale } else { 0.0 }
        })
        .collect();
    x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
}

/// LoRA adapters of `E` experts for one linear layer: delta(x) = scale * (drop(x) A_e) B_e.
#[derive(Module, Debug)]
pub struct MultiLora {
    /// [E, d_in, r]
    pub a: Param<Tensor<3>>,
    /// [E, r, d_out]
    pub b: Param<Tensor<3>>,
    pub scale: f64,
    pub dropout: f64,
}

impl MultiLora {
    pub fn experts(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[2]
    }

    /// The adapters' contribution for x [rows, T, d_in] -> [rows, T, d_out], in fp32 (the
    /// adapters' precision) whatever the input's.
    pub fn delta(&self, x: Tensor<3>, route: &Route) -> Tensor<3> {
        let x = x.cast(burn::tensor::FloatDType::F32);
        let x = if route.train && self.dropout > 0.0 { dropout(x, self.dropout) } else { x };
        let a = self.a.val().select(0, route.expert.clone()); // [rows, d_in, r]
        let b = self.b.val().select(0, route.expert.clone()); // [rows, r, d_out]
        let d = x.matmul(a).matmul(b) * self.scale; // [rows, T, d_out]
        match &route.active {
            Some(m) => d * m.clone(),
            None => d,
        }
    }

    /// The contribution for rows that share inputs: x_u [U, T, d_in] holds each utterance once
    /// and row i uses utterance `row_utt[i]` through its expert. x_u A_e is computed for every
    /// (utterance, expert) pair (rank-r, cheap) instead of copying x_u per row; dropout is
    /// drawn once per utterance and shared by its rows.
    pub fn delta_shared(&self, x_u: Tensor<3>, row_utt: &Tensor<1, Int>, route: &Route) -> Tensor<3> {
        let [u, t, d_in] = x_u.dims();
        let [e, _, r] = self.a.dims();
        let x_u = x_u.cast(burn::tensor::FloatDType::F32);
        let x_u = if route.train && self.dropout > 0.0 { dropout(x_u, self.dropout) } else { x_u };
        let a = self.a.val().swap_dims(0, 1).reshape([d_in, e * r]); // [d_in, E*r]
        let xa = x_u.reshape([u * t, d_in]).matmul(a).reshape([u, t, e, r]).swap_dims(1, 2).reshape([u * e, t, r]);
        let pair = row_utt.clone() * e as i64 + route.expert.clone(); // [rows] index into U*E
        let xa = xa.select(0, pair); // [rows, T, r]
        let b = self.b.val().select(0, route.expert.clone()); // [rows, r, d_out]
        let d = xa.matmul(b) * self.scale;
        match &route.active {
            Some(m) => d * m.clone(),
            None => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_the_expected_share_and_scale() {
        let dev = Device::flex();
        dev.seed(4);
        let x = Tensor::<2>::ones([400, 500], &dev);
        let y: Vec<f32> = dropout(x.clone(), 0.2).into_data().try_into_vec_as().unwrap();
        let kept = y.iter().filter(|&&v| v > 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.8).abs() < 0.005, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
        // Reproducible under the device seed, different across draws.
        dev.seed(4);
        let again: Vec<f32> = dropout(x.clone(), 0.2).into_data().try_into_vec_as().unwrap();
        assert_eq!(y, again);
        let other: Vec<f32> = dropout(x, 0.2).into_data().try_into_vec_as().unwrap();
        assert_ne!(y, other);
    }
}
