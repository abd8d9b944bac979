//! Error text stored with a message, bounded in length.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Default bound on stored error text, in characters (the smartflow seed used 2000).
pub const DEFAULT_MAX_ERROR_LEN: usize = 2000;

/// An error description, truncated on a UTF-8 character boundary to a maximum number
/// of characters so a verbose broker error can never bloat the outbox table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorText(String);

impl ErrorText {
    /// Truncates `text` to [`DEFAULT_MAX_ERROR_LEN`] characters.
    pub fn new(text: impl Into<String>) -> Self {
        Self::with_max_len(text, DEFAULT_MAX_ERROR_LEN)
    }

    /// Truncates `text` to at most `max_chars` characters. When text is cut, the last
    /// character kept is replaced by `…` so a reader can tell it was shortened.
    pub fn with_max_len(text: impl Into<String>, max_chars: usize) -> Self {
        let mut text = text.into();
        if let Some((cut, _)) = text.char_indices().nth(max_chars) {
            text.truncate(cut);
            if max_chars > 0 {
                text.pop();
                text.push('…');
            }
        }
        Self(text)
    }

    /// The (possibly truncated) text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the wrapper, returning the text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_kept() {
        assert_eq!(
            ErrorText::with_max_len("broker down", 20).as_str(),
            "broker down"
        );
    }

    #[test]
    fn long_text_is_cut_with_marker() {
        assert_eq!(ErrorText::with_max_len("abcdefgh", 4).as_str(), "abc…");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundary() {
        let t = ErrorText::with_max_len("消息发送失败原因", 3);
        assert_eq!(t.as_str(), "消息…");
    }

    #[test]
    fn default_bound_is_2000_chars() {
        let t = ErrorText::new("é".repeat(5000));
        assert_eq!(t.as_str().chars().count(), DEFAULT_MAX_ERROR_LEN);
    }

    proptest! {
        #[test]
        fn never_exceeds_bound(s in ".{0,300}", max in 0usize..100) {
            let t = ErrorText::with_max_len(s.clone(), max);
            prop_assert!(t.as_str().chars().count() <= max);
            if s.chars().count() <= max {
                prop_assert_eq!(t.as_str(), s.as_str());
            }
        }
    }
}
