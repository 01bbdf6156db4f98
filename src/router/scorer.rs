//! Interim complexity scorer (replaced by the fitted one).

use schemars::JsonSchema;
use serde::Serialize;

/// The scorer's verdict on one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// 0.0..=1.0, higher = needs a stronger model.
    pub value: f64,
    len: f64,
}

/// One feature's effect on the score.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Reason {
    /// Feature name.
    pub feature: String,
    /// Signed contribution.
    pub contribution: f64,
    /// Human sentence.
    pub detail: String,
}

impl Score {
    /// The features that moved the score most.
    pub fn reasons(&self, n: usize) -> Vec<Reason> {
        vec![Reason {
            feature: "length".into(),
            contribution: self.len,
            detail: "prompt length".into(),
        }]
        .into_iter()
        .take(n)
        .collect()
    }
}

/// Scores a prompt.
pub fn score(prompt: &str) -> Score {
    let v = length_only(prompt);
    Score { value: v, len: v }
}

/// Baseline: prompt length only.
pub fn length_only(prompt: &str) -> f64 {
    let n = prompt.len() as f64;
    (n / (n + 600.0)).clamp(0.0, 1.0)
}
