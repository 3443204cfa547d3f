//! The protocol card every evaluation result carries: which protocol, at which sizes, with
//! which bank and seeds, following which reference (repository, commit, files).

use serde::Serialize;
use std::collections::BTreeMap;

/// The reference implementations the protocols follow (the versions read and run for the goldens).
pub const LEOPART: &str = "MkuuWaUjinga/leopart@7835701338d477c70d581c0a10e594257dcac198";
pub const TIMET: &str = "SMSD75/Timetuning@94550b57ab51a6e249eea56378dab621223b1fb1";
pub const HUMMINGBIRD: &str =
    "vpariza/open-hummingbird-eval@5e79da292730edded800a89828b84f38469f5476";
pub const MOSIC: &str = "SMSD75/MoSiC@fed4637bdac1982910d28f10d4f1fa4b8a9e67bd";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolCard {
    pub protocol: String,
    /// Repository@commit and the files whose behaviour is reproduced.
    pub reference: String,
    pub input_size: usize,
    /// Side of the square label maps are scored at.
    pub mask_size: usize,
    /// Memory-bank patches (in-context retrieval), e.g. "10240000" or "unbounded".
    pub bank_size: Option<String>,
    pub seeds: Vec<u64>,
    /// Every other setting, by name.
    pub settings: BTreeMap<String, String>,
}

impl ProtocolCard {
    pub fn new(
        protocol: &str,
        reference: String,
        input_size: usize,
        mask_size: usize,
        seeds: Vec<u64>,
    ) -> Self {
        Self {
            protocol: protocol.into(),
            reference,
            input_size,
            mask_size,
            bank_size: None,
            seeds,
            settings: BTreeMap::new(),
        }
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.settings.insert(key.into(), value.to_string());
        self
    }

    /// `key` set to the notes joined, where there are any.
    pub fn notes(self, key: &str, notes: Vec<String>) -> Self {
        if notes.is_empty() {
            self
        } else {
            self.set(key, notes.join("; "))
        }
    }

    /// Lines for a printed table's header.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("protocol   {}", self.protocol),
            format!("reference  {}", self.reference),
            format!(
                "input      {} px   masks {}x{}",
                self.input_size, self.mask_size, self.mask_size
            ),
        ];
        if let Some(b) = &self.bank_size {
            out.push(format!("bank       {b} patches"));
        }
        out.push(format!(
            "seeds      {}",
            self.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        ));
        for (k, v) in &self.settings {
            out.push(format!("{k:<10} {v}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::ProtocolCard;

    #[test]
    fn notes_are_joined_and_none_leaves_the_key_out() {
        let card = || ProtocolCard::new("p", "r".into(), 224, 224, vec![1]);
        assert!(!card().notes("scratch", vec![]).settings.contains_key("scratch"));
        let c = card().notes("scratch", vec!["a in memory".into(), "b".into()]);
        assert_eq!(c.settings["scratch"], "a in memory; b");
    }
}
