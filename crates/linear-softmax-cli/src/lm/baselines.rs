//! The count-based baselines a language model must beat, on the same predicted tokens: a
//! unigram and a bigram model of the training sequences, in nats per token.
//!
//! ```text
//! unigram:  p(w) = (c(w) + 1) / (n + V)                               (add-one)
//! bigram:   p(w | u) = (c(u, w) + t(u) p(w)) / (c(u) + t(u))         (Witten-Bell)
//! ```
//!
//! `c` counts the predicted tokens (each sequence's tokens after its first) and the pairs
//! (previous token, token) of the training sequences, `t(u)` the distinct tokens seen after `u`;
//! a context never seen falls back to the unigram. Neither has a parameter to tune.

use std::collections::HashMap;

/// The baselines fitted on training sequences.
pub struct Baselines {
    unigram: Vec<f64>,
    /// `c(u, w)`, `c(u)` and `t(u)` per previous token `u`.
    following: HashMap<usize, (HashMap<usize, usize>, usize)>,
}

impl Baselines {
    /// Counts `sequences` over a vocabulary of `vocabulary` ids.
    pub fn fit(sequences: &[Vec<usize>], vocabulary: usize) -> Self {
        let mut counts = vec![0usize; vocabulary];
        let mut following: HashMap<usize, (HashMap<usize, usize>, usize)> = HashMap::new();
        for sequence in sequences {
            for pair in sequence.windows(2) {
                counts[pair[1]] += 1;
                let (next, total) = following.entry(pair[0]).or_default();
                *next.entry(pair[1]).or_default() += 1;
                *total += 1;
            }
        }
        let n: usize = counts.iter().sum();
        let unigram = counts
            .iter()
            .map(|&count| (count + 1) as f64 / (n + vocabulary) as f64)
            .collect();
        Self { unigram, following }
    }

    /// `p(w)`.
    fn unigram(&self, word: usize) -> f64 {
        self.unigram[word]
    }

    /// `p(w | u)`.
    fn bigram(&self, previous: usize, word: usize) -> f64 {
        match self.following.get(&previous) {
            None => self.unigram(word),
            Some((next, total)) => {
                let types = next.len() as f64;
                let pair = next.get(&word).copied().unwrap_or(0) as f64;
                (pair + types * self.unigram(word)) / (*total as f64 + types)
            }
        }
    }

    /// The mean negative log-likelihood per predicted token of `sequences`, unigram and
    /// bigram, in nats.
    pub fn loss(&self, sequences: &[Vec<usize>]) -> [f64; 2] {
        let (mut unigram, mut bigram, mut count) = (0.0, 0.0, 0usize);
        for sequence in sequences {
            for pair in sequence.windows(2) {
                unigram -= self.unigram(pair[1]).ln();
                bigram -= self.bigram(pair[0], pair[1]).ln();
                count += 1;
            }
        }
        [unigram / count.max(1) as f64, bigram / count.max(1) as f64]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_and_the_bigram_learns_pairs() {
        let sequences = vec![vec![2, 3, 2, 3, 2, 3], vec![4, 2, 3]];
        let baselines = Baselines::fit(&sequences, 5);
        let total: f64 = (0..5).map(|w| baselines.unigram(w)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        for previous in 0..5 {
            let total: f64 = (0..5).map(|w| baselines.bigram(previous, w)).sum();
            assert!((total - 1.0).abs() < 1e-12, "after {previous}: {total}");
        }
        let [unigram, bigram] = baselines.loss(&sequences);
        assert!(bigram < unigram, "{bigram} vs {unigram}");
    }
}
