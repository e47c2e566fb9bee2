//! The embedded Shakespeare, split into speeches, tokenized, cut into sequences of `T` tokens
//! and batched as `[B, T]` inputs and labels.

use std::io::Read;

use burn::prelude::*;
use flate2::read::GzDecoder;
use linear_softmax::Targets;

use super::tokenizer::{PAD, Tokenizer};
use crate::error::{Error, Result};

/// The label of padded positions: PyTorch's ignore index.
pub const IGNORE: i64 = -100;

static SHAKESPEARE_GZ: &[u8] = include_bytes!("../../data/tinyshakespeare.txt.gz");

/// The embedded text: Tiny Shakespeare (char-rnn's `input.txt`, public domain; see
/// `data/README.md`), 1,115,394 characters.
pub fn shakespeare() -> Result<String> {
    let mut text = String::new();
    GzDecoder::new(SHAKESPEARE_GZ)
        .read_to_string(&mut text)
        .map_err(|err| Error::Data {
            source_name: "embedded tinyshakespeare.txt.gz".into(),
            message: format!("cannot decompress: {err}"),
        })?;
    Ok(text)
}

/// A text as training and validation sequences of token ids.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The vocabulary, fitted on the training part.
    pub tokenizer: Tokenizer,
    /// Training sequences, each 2 to `T` tokens.
    pub train: Vec<Vec<usize>>,
    /// Validation sequences, each 2 to `T` tokens.
    pub validation: Vec<Vec<usize>>,
}

impl Corpus {
    /// `text` split into speeches (paragraphs between blank lines), the first
    /// `1 - validation_fraction` of them for training, the rest for validation; the
    /// vocabulary is the training part's pieces seen `min_count` times. Each speech is cut into
    /// sequences of up to `time` tokens that overlap by one token, so that every token of a
    /// speech but its first is predicted exactly once (by the position before it).
    pub fn new(
        text: &str,
        min_count: usize,
        time: usize,
        validation_fraction: f64,
    ) -> Result<Self> {
        let bad = |message: String| Error::Data {
            source_name: "language-model text".into(),
            message,
        };
        if time < 2 {
            return Err(bad(format!(
                "sequence length {time}: at least 2 tokens (one to predict from)"
            )));
        }
        let speeches: Vec<&str> = text
            .split("\n\n")
            .map(str::trim)
            .filter(|speech| !speech.is_empty())
            .collect();
        let validation_count = (speeches.len() as f64 * validation_fraction).round() as usize;
        if speeches.len() < 2 || validation_count == 0 || validation_count >= speeches.len() {
            return Err(bad(format!(
                "{} speeches cannot be split into training and validation (fraction {validation_fraction})",
                speeches.len()
            )));
        }
        let (train_speeches, validation_speeches) =
            speeches.split_at(speeches.len() - validation_count);
        let tokenizer = Tokenizer::fit(&train_speeches.join("\n\n"), min_count);
        let cut = |speeches: &[&str]| -> Vec<Vec<usize>> {
            speeches
                .iter()
                .flat_map(|speech| sequences(&tokenizer.encode(speech), time))
                .collect()
        };
        let (train, validation) = (cut(train_speeches), cut(validation_speeches));
        Ok(Self {
            train,
            validation,
            tokenizer,
        })
    }

    /// The number of predicted tokens (all but each sequence's first) of `sequences`.
    pub fn predicted_tokens(sequences: &[Vec<usize>]) -> usize {
        sequences.iter().map(|sequence| sequence.len() - 1).sum()
    }
}

/// `ids` cut into pieces of up to `time` tokens, each starting on the last token of the one
/// before; pieces of one token (nothing to predict) are dropped.
fn sequences(ids: &[usize], time: usize) -> Vec<Vec<usize>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + time).min(ids.len());
        pieces.push(ids[start..end].to_vec());
        start = end - 1;
    }
    pieces
}

/// A batch of sequences padded to `T`: the input tokens (`<pad>` after each sequence's end)
/// and the labels, the same tokens with the padding marked [`IGNORE`]; the head's next-token
/// shift pairs position `t` with label `t + 1`.
pub struct Batch {
    /// `[B, T]` input ids.
    pub tokens: Tensor<2, Int>,
    /// `[B, T]` labels.
    pub labels: Tensor<2, Int>,
}

impl Batch {
    /// The batch of `sequences` (each at most `time` tokens) on `device`.
    pub fn new(sequences: &[&Vec<usize>], time: usize, device: &Device) -> Self {
        let mut tokens = Vec::with_capacity(sequences.len() * time);
        let mut labels = Vec::with_capacity(sequences.len() * time);
        for sequence in sequences {
            for t in 0..time {
                match sequence.get(t) {
                    Some(&id) => {
                        tokens.push(id as i64);
                        labels.push(id as i64);
                    }
                    None => {
                        tokens.push(PAD as i64);
                        labels.push(IGNORE);
                    }
                }
            }
        }
        let shape = [sequences.len(), time];
        Self {
            tokens: Tensor::from_data(TensorData::new(tokens, shape), device),
            labels: Tensor::from_data(TensorData::new(labels, shape), device),
        }
    }

    /// The labels as the head's targets over `vocabulary` classes.
    pub fn targets(&self, vocabulary: usize) -> Result<Targets> {
        Ok(Targets::from_tensor(
            self.labels.clone(),
            vocabulary,
            Some(IGNORE),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_overlap_by_one_token_so_each_token_is_predicted_once() {
        let ids: Vec<usize> = (10..20).collect();
        let pieces = sequences(&ids, 4);
        assert_eq!(pieces[0], [10, 11, 12, 13]);
        assert_eq!(pieces[1], [13, 14, 15, 16]);
        assert_eq!(pieces.last().unwrap(), &[16, 17, 18, 19]);
        assert_eq!(Corpus::predicted_tokens(&pieces), ids.len() - 1);
    }
}
