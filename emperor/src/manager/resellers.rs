//! What a reseller sees from inside its group's container: its sites'
//! states and usage, and its drop directory's refusals, written where the
//! group's vassal reads them (`vassal sites`, and its notifications).

use super::*;

impl Manager {
    /// Writes each running group's `sites.json` (`<run-dir>/usage/<group>/`,
    /// bound read-only at `/run/imperium/usage`), when it changed.
    pub(super) fn publish_sites(&mut self) {
        let groups: Vec<Name> = self
            .vassals
            .iter()
            .filter(|(_, v)| matches!(v.file, VassalFile::Group(_)) && v.init.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if groups.is_empty() {
            return;
        }
        let rows = self.status();
        for g in groups {
            let sites = model::usage::Sites {
                sites: rows.iter().filter_map(|r| r.site_of(&g)).collect(),
                refused: self.refused.get(&g).cloned().unwrap_or_default(),
            };
            let Ok(bytes) = serde_json::to_vec(&sites) else {
                continue;
            };
            if self.last_sites.get(&g) == Some(&bytes) {
                continue;
            }
            let file = self
                .cfg
                .layout
                .usage_dir(&g)
                .join(model::layout::inside::SITES_FILE);
            match model::atomic::write(&file, &bytes, 0o644) {
                Ok(()) => {
                    self.last_sites.insert(g, bytes);
                }
                Err(e) => {
                    tracing::warn!(group = %g, error = %e, "writing the group's sites failed")
                }
            }
        }
    }
}
