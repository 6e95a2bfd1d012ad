//! A vassal's address, and who may send mail.

use super::*;

impl Manager {
    /// Gives `name` its address in the pool (kept for good once on disk).
    pub(super) fn allocate_address(
        &mut self,
        name: &Name,
        file: &VassalFile,
    ) -> std::io::Result<()> {
        let Some(net) = &self.net else { return Ok(()) };
        let owner = match file {
            VassalFile::Group(_) => name.as_str(),
            VassalFile::Site(s) => s.group.as_ref().map(|g| g.as_str()).unwrap_or(""),
        };
        let (_, changed) = self.addresses.allocate(net.pool(), name.as_str(), owner)?;
        self.net_stale |= changed;
        // Also what an earlier commit failed to put on disk: no address is
        // used before it is there.
        self.addresses.commit(&self.cfg.layout.address_table())
    }

    /// Makes the mail allowlist, the egress lists and the hosts table again
    /// when what they are made of changed (each is O(vassals); most events
    /// change none of it). What failed is tried again at the next refresh.
    pub(super) fn refresh_net(&mut self) {
        if !std::mem::take(&mut self.net_stale) {
            return;
        }
        let allowed = self.sync_smtp();
        let hosts = self.write_hosts();
        self.net_stale = !(allowed && hosts);
    }

    /// Writes `<state-dir>/hosts.nss` (`<name>.imperium` on the host) when
    /// the vassals' addresses changed.
    fn write_hosts(&mut self) -> bool {
        let Some(net) = &self.net else { return true };
        let hosts: Vec<model::nss::hosts::Host> = self
            .vassals
            .keys()
            .filter_map(|name| {
                let off = *self.addresses.vassals.get(name.as_str())?;
                Some(model::nss::hosts::Host {
                    name: name.to_string(),
                    v4: net.pool().v4(off),
                    v6: net.pool().v6(off),
                })
            })
            .collect();
        let bytes = model::nss::hosts::encode(&hosts);
        if bytes == self.last_hosts {
            return true;
        }
        // Made again from the address table at every start of the emperor:
        // "old or new, never half" is all it needs, not the fsyncs.
        match model::atomic::replace(&self.cfg.layout.nss_hosts(), &bytes, 0o644) {
            Ok(()) => {
                self.last_hosts = bytes;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing the hosts table failed");
                false
            }
        }
    }

    /// The address of `name`, if it has one.
    pub(super) fn address_of(&self, name: &Name) -> Option<String> {
        self.v4_of(name).map(|a| a.to_string())
    }

    /// The IPv4 address of `name`, if it has one.
    pub(super) fn v4_of(&self, name: &Name) -> Option<std::net::Ipv4Addr> {
        let net = self.net.as_ref()?;
        let off = *self.addresses.vassals.get(name.as_str())?;
        Some(net.pool().v4(off))
    }

    /// Sites (and groups) allowed to send mail: their own file says so, and
    /// for a reseller's site the group's file (the admin's) too. Then the
    /// egress lists.
    fn sync_smtp(&self) -> bool {
        let Some(net) = &self.net else { return true };
        let allowed = |name: &Name, v: &Vassal| match &v.file {
            VassalFile::Group(g) => g.network.smtp,
            VassalFile::Site(s) => {
                s.network.smtp
                    && s.group.as_ref().is_none_or(|g| {
                        matches!(self.vassals.get(g).map(|v| &v.file),
                            Some(VassalFile::Group(gf)) if gf.network.smtp)
                    })
            }
        } && self.addresses.vassals.contains_key(name.as_str());
        let mut set = BTreeSet::new();
        for (name, v) in &self.vassals {
            if allowed(name, v) {
                let off = self.addresses.vassals[name.as_str()];
                set.insert(std::net::IpAddr::V4(net.pool().v4(off)));
                if let Some(a) = net.pool().v6(off) {
                    set.insert(std::net::IpAddr::V6(a));
                }
            }
        }
        let allowed = net
            .allow_smtp(set)
            .map_err(|e| tracing::error!(error = %e, "updating who may send mail failed"))
            .is_ok();
        self.sync_egress(net) && allowed
    }

    /// Vassals whose files narrow their egress get their own chain.
    fn sync_egress(&self, net: &crate::network::HostNet) -> bool {
        let mut want = crate::network::Egress::new();
        for (name, v) in &self.vassals {
            let list = match &v.file {
                VassalFile::Group(g) => &g.network.egress,
                VassalFile::Site(s) => &s.network.egress,
            };
            let Some(off) = self.addresses.vassals.get(name.as_str()) else {
                continue;
            };
            if list.is_empty() {
                continue;
            }
            // Validated with the file: an entry that does not parse is not there.
            let rules = list
                .iter()
                .filter_map(|e| model::network::Egress::parse(e).ok())
                .collect();
            let mut addrs = vec![std::net::IpAddr::V4(net.pool().v4(*off))];
            addrs.extend(net.pool().v6(*off).map(std::net::IpAddr::V6));
            want.insert(*off, (addrs, rules));
        }
        net.set_egress(want)
            .map_err(|e| tracing::error!(error = %e, "updating the egress lists failed"))
            .is_ok()
    }
}
