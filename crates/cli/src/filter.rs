//! `--include` / `--exclude` patterns on object keys and relative paths,
//! shared by `import` and `sync` (the matcher is `tessera_vfs::glob`).

use tessera_vfs::glob::glob_match;

/// Which keys a command works on.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyFilter {
    /// Take only keys matching this pattern (`*` within a path segment,
    /// `**` across segments, `?` one character); repeatable.
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip keys matching this pattern; repeatable, wins over --include.
    #[arg(long)]
    pub exclude: Vec<String>,
}

impl KeyFilter {
    /// Whether the filter takes every key.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    pub fn wants(&self, key: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob_match(p, key)))
            && !self.exclude.iter().any(|p| glob_match(p, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_wins_over_include() {
        let f = KeyFilter {
            include: vec!["lora/**".into()],
            exclude: vec!["**.md".into()],
        };
        assert!(f.wants("lora/a.bin"));
        assert!(!f.wants("lora/README.md"));
        assert!(!f.wants("ckpt/model.bin"));
        assert!(KeyFilter::default().wants("anything"));
    }
}
