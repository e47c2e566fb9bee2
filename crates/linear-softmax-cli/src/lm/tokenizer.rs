//! A word-level tokenizer: lower-cased words (`[a-z']+`), each other non-space character
//! (punctuation) as a token of its own, and line breaks kept (verse is laid out in lines);
//! words rarer than a minimum count in the training text become `<unk>`.

use std::collections::HashMap;

/// Id of `<pad>`: the input token of padded positions (their labels are ignored).
pub const PAD: usize = 0;
/// Id of `<unk>`: every word outside the vocabulary.
pub const UNK: usize = 1;
/// The text of the line-break token.
const NEWLINE: &str = "\n";

/// The pieces of `text`: lower-cased words of letters and apostrophes, line breaks, and every
/// other non-space character alone.
pub fn pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut word = String::new();
    for character in text.chars() {
        if character.is_ascii_alphabetic() || character == '\'' {
            word.push(character.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            pieces.push(std::mem::take(&mut word));
        }
        if character == '\n' {
            pieces.push(NEWLINE.to_string());
        } else if !character.is_whitespace() {
            pieces.push(character.to_string());
        }
    }
    if !word.is_empty() {
        pieces.push(word);
    }
    pieces
}

/// A vocabulary: `<pad>`, `<unk>`, then the pieces of the training text seen at least
/// `min_count` times, most frequent first (ties in text order of first sight, so the ids are
/// the same on every run).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    words: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Tokenizer {
    /// The vocabulary of `training_text`'s pieces seen at least `min_count` times.
    pub fn fit(training_text: &str, min_count: usize) -> Self {
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for (position, piece) in pieces(training_text).into_iter().enumerate() {
            counts.entry(piece).or_insert((0, position)).0 += 1;
        }
        let mut kept: Vec<(String, usize, usize)> = counts
            .into_iter()
            .filter(|(_, (count, _))| *count >= min_count.max(1))
            .map(|(piece, (count, first))| (piece, count, first))
            .collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        let mut words = vec!["<pad>".to_string(), "<unk>".to_string()];
        words.extend(kept.into_iter().map(|(piece, _, _)| piece));
        let ids = words
            .iter()
            .enumerate()
            .map(|(id, word)| (word.clone(), id))
            .collect();
        Self { words, ids }
    }

    /// The vocabulary size `V` (the head's class count).
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary is only `<pad>` and `<unk>`.
    pub fn is_empty(&self) -> bool {
        self.words.len() <= 2
    }

    /// The ids of `text`'s pieces (`<unk>` for pieces outside the vocabulary).
    pub fn encode(&self, text: &str) -> Vec<usize> {
        pieces(text)
            .iter()
            .map(|piece| self.ids.get(piece).copied().unwrap_or(UNK))
            .collect()
    }

    /// Text of `ids`: words separated by spaces, punctuation against the word before it, line
    /// breaks as they are.
    pub fn decode(&self, ids: &[usize]) -> String {
        let mut text = String::new();
        for &id in ids {
            let word = self.words.get(id).map_or("<unk>", String::as_str);
            let attaches = word == NEWLINE
                || matches!(word, "," | "." | ";" | ":" | "!" | "?")
                || text.ends_with('\n')
                || text.is_empty();
            if !attaches {
                text.push(' ');
            }
            text.push_str(word);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_punctuation_and_line_breaks_are_pieces() {
        let text = "First Citizen:\nYou are all resolved, rather to die than to famish?";
        assert_eq!(
            pieces(text)[..6],
            ["first", "citizen", ":", "\n", "you", "are"]
        );
        assert_eq!(pieces(text).last().unwrap(), "?");
    }

    #[test]
    fn rare_words_become_unk_and_ids_round_trip() {
        let tokenizer = Tokenizer::fit("to be or not to be , that", 2);
        // <pad>, <unk>, then "to" and "be" (twice each, "to" seen first).
        assert_eq!(tokenizer.len(), 4);
        let ids = tokenizer.encode("To be, or");
        assert_eq!(ids, [2, 3, UNK, UNK]);
        assert_eq!(tokenizer.decode(&ids), "to be <unk> <unk>");
        assert_eq!(tokenizer.decode(&tokenizer.encode("to be")), "to be");
    }
}
