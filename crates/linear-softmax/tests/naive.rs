//! The seed's derivation followed literally, one sample at a time in plain f64 `Vec`s: the true
//! class's column of dW gets `(a_y - 1) x`, every other column `a_j x`, averaged over N. Both
//! tensor paths must agree with it.

mod common;

use burn::tensor::DType;
use common::{F32_AGREEMENT, F64_AGREEMENT, assert_close, backends, host, problem};
use linear_softmax::{LossOptions, LossPath};

struct NaiveGradients {
    loss: f64,
    d_weight: Vec<f64>,
    d_bias: Vec<f64>,
    d_input: Vec<f64>,
}

/// Loss and gradients of `mean_i -log softmax(x_i W + b)_{y_i} + l2 sum W^2`, sample by sample.
fn naive(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    labels: &[i64],
    [n, d, c]: [usize; 3],
    l2: f64,
) -> NaiveGradients {
    let mut loss = 0.0;
    let mut d_weight = vec![0.0; d * c];
    let mut d_bias = vec![0.0; c];
    let mut d_input = vec![0.0; n * d];
    for i in 0..n {
        let xi = &x[i * d..(i + 1) * d];
        let scores: Vec<f64> = (0..c)
            .map(|j| b.map_or(0.0, |b| b[j]) + (0..d).map(|k| xi[k] * w[k * c + j]).sum::<f64>())
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        let a: Vec<f64> = exp.iter().map(|e| e / total).collect();
        let y = labels[i] as usize;
        loss += -(a[y].ln());
        for j in 0..c {
            // The seed's two cases.
            let coefficient = if j == y { a[y] - 1.0 } else { a[j] };
            for k in 0..d {
                d_weight[k * c + j] += coefficient * xi[k] / n as f64;
                d_input[i * d + k] += coefficient * w[k * c + j] / n as f64;
            }
            d_bias[j] += coefficient / n as f64;
        }
    }
    for (dw, w) in d_weight.iter_mut().zip(w) {
        *dw += 2.0 * l2 * w;
    }
    NaiveGradients {
        loss: loss / n as f64 + l2 * w.iter().map(|w| w * w).sum::<f64>(),
        d_weight,
        d_bias,
        d_input,
    }
}

#[test]
fn both_paths_agree_with_the_per_sample_derivation() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in [(DType::F32, F32_AGREEMENT), (DType::F64, F64_AGREEMENT)] {
            for (seed, shape) in [[1, 1, 2], [7, 31, 10], [47, 31, 123], [47, 1, 10]]
                .into_iter()
                .enumerate()
            {
                for l2 in [0.0, 0.1] {
                    let p = problem(shape, true, dtype, &device, seed as u64);
                    let bias = host(&p.head.bias().unwrap());
                    let expected = naive(
                        &host(&p.x),
                        &host(&p.head.weight()),
                        Some(&bias),
                        &p.labels,
                        shape,
                        l2,
                    );
                    for path in [LossPath::Manual, LossPath::Autodiff] {
                        let options = LossOptions::new().with_l2(l2).with_path(path);
                        let got = p.head.gradients(p.x.clone(), &p.targets, &options).unwrap();
                        let context = format!("{path} {backend} {dtype:?} {shape:?} l2={l2}");
                        assert_close(
                            &format!("{context} loss"),
                            &host(&got.loss),
                            &[expected.loss],
                            tolerance,
                        );
                        assert_close(
                            &format!("{context} dW"),
                            &host(&got.d_weight),
                            &expected.d_weight,
                            tolerance,
                        );
                        assert_close(
                            &format!("{context} db"),
                            &host(&got.d_bias.unwrap()),
                            &expected.d_bias,
                            tolerance,
                        );
                        assert_close(
                            &format!("{context} dX"),
                            &host(&got.d_input),
                            &expected.d_input,
                            tolerance,
                        );
                    }
                }
            }
        }
    }
}
