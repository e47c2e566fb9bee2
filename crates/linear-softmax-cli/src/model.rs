//! A classifier with our head as its final layer, and saving and loading it.
//!
//! With no hidden layers it is the plain linear softmax classifier; otherwise an MLP
//! `x -> relu(Linear) -> ... -> LinearSoftmax`. A saved model is a directory holding
//! `config.json` (the [`ClassifierConfig`]) and `model.bpk` (the parameters, in Burn's burnpack
//! record format). Each file is written to a temporary file and renamed over the old one, so an
//! interrupted save leaves the previous file whole; loading checks that the parameters fit the
//! config, so a mismatched pair is an error, never a silently wrong model.

use linear_softmax::Error as HeadError;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::{relu, softmax};

use crate::error::{Error, Result};
use linear_softmax::{LinearSoftmax, LinearSoftmaxConfig};

/// File name of the config inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the parameters inside a model directory.
pub const WEIGHTS_FILE: &str = "model.bpk";

/// Shape of a [`Classifier`].
#[derive(Config, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// Features per input row `D`.
    pub d_input: usize,
    /// Number of classes `C`.
    pub n_classes: usize,
    /// Widths of the hidden layers, input side first; empty for the linear classifier.
    #[config(default = "Vec::new()")]
    pub hidden: Vec<usize>,
}

impl ClassifierConfig {
    /// Creates the classifier on `device`.
    pub fn init(&self, device: &Device) -> Result<Classifier> {
        if let Some(position) = self.hidden.iter().position(|&width| width == 0) {
            return Err(HeadError::InvalidOption {
                name: "hidden layer width",
                value: format!("0 (layer {})", position + 1),
                expected: "at least 1",
            }
            .into());
        }
        let mut widths = vec![self.d_input];
        widths.extend(&self.hidden);
        let hidden = widths
            .windows(2)
            .map(|pair| LinearConfig::new(pair[0], pair[1]).init(device))
            .collect();
        let head = LinearSoftmaxConfig::new(*widths.last().expect("d_input"), self.n_classes)
            .init(device)?;
        Ok(Classifier { hidden, head })
    }

    /// The number of parameters (weights and biases) of the classifier, `None` if it overflows.
    pub fn n_parameters(&self) -> Option<usize> {
        let mut widths = vec![self.d_input];
        widths.extend(&self.hidden);
        widths.push(self.n_classes);
        widths.windows(2).try_fold(0usize, |total, pair| {
            let layer = pair[0].checked_mul(pair[1])?.checked_add(pair[1])?;
            total.checked_add(layer)
        })
    }
}

/// An MLP whose final layer is a [`LinearSoftmax`] head (just the head without hidden layers).
///
/// # Shapes
/// - input `x`: `[N, D]`
/// - features (the head's input): `[N, H_last]` (`[N, D]` without hidden layers)
/// - logits, probabilities: `[N, C]`; predictions: `[N]`
#[derive(Module, Debug)]
pub struct Classifier {
    /// The hidden layers, each followed by a ReLU.
    pub hidden: Vec<Linear>,
    /// The final layer and softmax.
    pub head: LinearSoftmax,
}

impl Classifier {
    /// What the head sees: `x` through every hidden layer and its ReLU.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        self.hidden
            .iter()
            .fold(x, |activation, layer| relu(layer.forward(activation)))
    }

    /// The input width `D` this classifier expects.
    pub fn d_input(&self) -> usize {
        match self.hidden.first() {
            Some(layer) => layer.weight.shape()[0],
            None => self.head.n_features(),
        }
    }

    /// Logits `[N, C]`.
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        self.check_input(&x)?;
        Ok(self.head.forward(self.features(x))?)
    }

    /// Class probabilities `[N, C]`.
    pub fn probabilities(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        Ok(softmax(self.forward(x)?, 1))
    }

    /// The most probable class of each row, `[N]`.
    pub fn predict(&self, x: Tensor<2>) -> Result<Tensor<1, Int>> {
        Ok(self.forward(x)?.argmax(1).squeeze_dim(1))
    }

    fn check_input(&self, x: &Tensor<2>) -> Result<()> {
        let [rows, width] = x.dims();
        if rows == 0 {
            return Err(HeadError::EmptyBatch.into());
        }
        if width != self.d_input() {
            return Err(HeadError::InputWidthMismatch {
                got: width,
                expected: self.d_input(),
            }
            .into());
        }
        Ok(())
    }
}

/// Saves `model` and its `config` into `dir` (created if needed), each file atomically.
pub fn save(model: &Classifier, config: &ClassifierConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|err| file_error(dir, format!("cannot create: {err}")))?;
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|err| file_error(&weights, format!("cannot encode the parameters: {err}")))?;
    write_atomically(&weights, &bytes)?;
    write_atomically(&dir.join(CONFIG_FILE), config.to_string().as_bytes())
}

/// Loads a model saved by [`save`] onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<(Classifier, ClassifierConfig)> {
    if !dir.is_dir() {
        return Err(file_error(
            dir,
            format!(
                "no model directory here: expected a directory with {CONFIG_FILE} and \
                 {WEIGHTS_FILE}, as written by `train --out DIR`"
            ),
        ));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config_text = std::fs::read(&config_path)
        .map_err(|err| file_error(&config_path, format!("cannot read the model config: {err}")))?;
    let config = ClassifierConfig::load_binary(&config_text).map_err(|err| {
        file_error(
            &config_path,
            format!("not a valid model config ({err}): expected the JSON written by train"),
        )
    })?;
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights)
        .map_err(|err| file_error(&weights, format!("cannot read the parameters: {err}")))?;
    let size = bytes.len();
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|err| {
        file_error(
            &weights,
            format!("{size} bytes, not a valid burnpack record ({err}): truncated or corrupt?"),
        )
    })?;
    // Every parameter takes at least a byte of the (valid) record: a config that promises more
    // (a config.json of another model, or a corrupt one) must not allocate a model that large.
    match config.n_parameters() {
        Some(n_parameters) if n_parameters <= size => {}
        n_parameters => {
            return Err(file_error(
                &config_path,
                format!(
                    "a model of {} parameters ({config:?}), but {WEIGHTS_FILE} has {size} bytes: \
                     the config and the parameters are not from one model",
                    n_parameters.map_or_else(|| "too many".into(), |n| n.to_string())
                ),
            ));
        }
    }
    let model = config
        .init(device)?
        .try_load_record(record)
        .map_err(|err| {
            file_error(
                &weights,
                format!("the parameters do not fit {CONFIG_FILE} ({config:?}): {err}"),
            )
        })?;
    Ok((model, config))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temporary = PathBuf::from(path);
    temporary.set_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(Default::default, |name| name.to_string_lossy())
    ));
    std::fs::write(&temporary, bytes)
        .map_err(|err| file_error(&temporary, format!("cannot write: {err}")))?;
    std::fs::rename(&temporary, path).map_err(|err| {
        file_error(
            path,
            format!("cannot replace with {}: {err}", temporary.display()),
        )
    })
}

fn file_error(path: &Path, message: String) -> Error {
    Error::Data {
        source_name: path.display().to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_model_reloads_with_identical_probabilities() {
        let device = Device::flex();
        let config = ClassifierConfig::new(5, 3).with_hidden(vec![4, 6]);
        let model = config.init(&device).unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        save(&model, &config, dir.path()).unwrap();
        let (reloaded, reloaded_config) = load(dir.path(), &device).unwrap();
        assert_eq!(reloaded_config, config);
        let x = Tensor::<2>::random([7, 5], burn::tensor::Distribution::Default, &device);
        let probabilities = |model: &Classifier| {
            model
                .probabilities(x.clone())
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(probabilities(&reloaded), probabilities(&model));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
    }

    #[test]
    fn parameters_that_do_not_fit_the_config_are_refused() {
        let device = Device::flex();
        let dir = tempfile::TempDir::new().unwrap();
        let small = ClassifierConfig::new(5, 3);
        save(&small.init(&device).unwrap(), &small, dir.path()).unwrap();
        // A config from another run beside these parameters: a torn save, say.
        let wide = ClassifierConfig::new(5, 3).with_hidden(vec![8]);
        std::fs::write(dir.path().join(CONFIG_FILE), wide.to_string()).unwrap();
        let err = load(dir.path(), &device).unwrap_err().to_string();
        assert!(
            err.contains("model.bpk") && err.contains("do not fit config.json"),
            "{err}"
        );
    }
}
