//! Who may claim a domain.
//!
//! Within one group (a reseller, or the admin's own sites), a domain belongs to
//! the first site that claims it, by exact name. Across groups the whole
//! subtree is at stake: a site may not take a name that equals, lies under, or
//! lies above (a wildcard: covers) a name that a site of another group holds,
//! so a reseller's customer can never be served traffic meant for another
//! customer's domain. The rule is symmetric: two claims conflict or not
//! whichever came first, so the sites a judgement lets run are let run by the
//! next one too, whatever order it takes them in. No site may claim a public
//! suffix (`co.uk`), nor a wildcard directly on one (`*.co.uk`).

use std::collections::BTreeMap;

use crate::{Domain, Name};

/// One claim: the domain as written, its site and the site's group (`None`: the admin's).
#[derive(Debug, Clone, PartialEq)]
struct Claim {
    domain: String,
    site: Name,
    group: Option<Name>,
}

/// The domains claimed so far, indexed by their names with labels reversed
/// (`shop.example.com` -> `com.example.shop`), so that everything under a
/// name is one range of the index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Claims {
    by_base: BTreeMap<String, Vec<Claim>>,
}

fn base(d: &str) -> &str {
    d.strip_prefix("*.").unwrap_or(d)
}

fn reversed(name: &str) -> String {
    name.rsplit('.').collect::<Vec<_>>().join(".")
}

/// Why `d` may not be claimed by anyone, if it is a public suffix or a wildcard on one.
pub fn public_suffix(d: &str) -> Option<String> {
    let b = base(d);
    let suffix = psl::suffix(b.as_bytes())?;
    if suffix.as_bytes() != b.as_bytes() {
        return None;
    }
    Some(if d.starts_with("*.") {
        format!("domain {d} is a wildcard on the public suffix {b}")
    } else {
        format!("domain {d} is a public suffix")
    })
}

impl Claims {
    /// Whether `site` of `group` may claim `d`; the one-line reason if not.
    pub fn check(&self, site: &Name, group: Option<&Name>, d: &Domain) -> Result<(), String> {
        let d = d.as_str();
        if let Some(why) = public_suffix(d) {
            return Err(why);
        }
        let b = base(d);
        let other = |c: &Claim| c.group.as_ref() != group && c.site != *site;
        // The same name, or a name above it (`d` lies under it).
        let mut above = Some(b);
        while let Some(a) = above {
            for c in self.by_base.get(&reversed(a)).into_iter().flatten() {
                if c.domain == d && c.site != *site {
                    return Err(format!("domain {d} is already owned by {}", c.site));
                }
                if other(c) {
                    return Err(if a == b {
                        format!(
                            "domain {d} overlaps {} of site {} in another group",
                            c.domain, c.site
                        )
                    } else {
                        format!(
                            "domain {d} lies under {} of site {} in another group",
                            c.domain, c.site
                        )
                    });
                }
            }
            above = a.split_once('.').map(|(_, parent)| parent);
        }
        // Names below it: a wildcard covers them; an exact name may not take
        // their parent from another group either (else the order of two
        // claims would decide which one stands).
        let prefix = format!("{}.", reversed(b));
        for (_, cs) in self
            .by_base
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            if let Some(c) = cs.iter().find(|c| other(c)) {
                let how = if d.starts_with("*.") {
                    "covers"
                } else {
                    "lies above"
                };
                return Err(format!(
                    "domain {d} {how} {} of site {} in another group",
                    c.domain, c.site
                ));
            }
        }
        Ok(())
    }

    /// Records that `site` of `group` holds `d`. The claims on one name are
    /// kept in order of site and domain, whatever order they came in, so a
    /// refusal names the same holder however the claims were made.
    pub fn add(&mut self, site: &Name, group: Option<&Name>, d: &Domain) {
        let claims = self.by_base.entry(reversed(base(d.as_str()))).or_default();
        let at = claims.partition_point(|c| (&c.site, c.domain.as_str()) < (site, d.as_str()));
        // Most names have one claim, kept while their sites run: no room
        // for three more each.
        claims.reserve_exact(1);
        claims.insert(
            at,
            Claim {
                domain: d.as_str().to_owned(),
                site: site.clone(),
                group: group.cloned(),
            },
        );
    }

    /// Drops the claim of `site` on `d` (its file is gone).
    pub fn remove(&mut self, site: &Name, d: &Domain) {
        let key = reversed(base(d.as_str()));
        let Some(claims) = self.by_base.get_mut(&key) else {
            return;
        };
        claims.retain(|c| !(c.site == *site && c.domain == d.as_str()));
        if claims.is_empty() {
            self.by_base.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Domain {
        s.parse().unwrap()
    }

    #[test]
    fn another_groups_subtree_is_off_limits_and_a_groups_own_is_not() {
        let mut c = Claims::default();
        let (g1, g2) = (n("g1"), n("g2"));
        c.add(&n("victim"), Some(&g1), &d("victim.test"));
        c.add(&n("deep"), Some(&g1), &d("a.b.shop.test"));
        let bad = |c: &Claims, site: &str, g: Option<&Name>, dom: &str| {
            c.check(&n(site), g, &d(dom)).unwrap_err()
        };
        assert!(bad(&c, "evil", Some(&g2), "victim.test").contains("already owned by victim"));
        assert!(bad(&c, "evil", Some(&g2), "www.victim.test").contains("lies under victim.test"));
        assert!(bad(&c, "evil", Some(&g2), "*.victim.test").contains("overlaps victim.test"));
        assert!(bad(&c, "evil", Some(&g2), "*.shop.test").contains("covers a.b.shop.test"));
        assert!(bad(&c, "evil", None, "x.victim.test").contains("another group"));
        // The same group may split its own names between its sites.
        assert!(c.check(&n("sib"), Some(&g1), &d("www.victim.test")).is_ok());
        assert!(c.check(&n("sib"), Some(&g1), &d("*.victim.test")).is_ok());
        assert!(bad(&c, "sib", Some(&g1), "victim.test").contains("already owned"));
        // A parent claimed after another group's child, as its child would
        // be claimed after it.
        assert!(bad(&c, "evil", Some(&g2), "shop.test").contains("lies above a.b.shop.test"));
        assert!(bad(&c, "evil", Some(&g2), "b.shop.test").contains("lies above a.b.shop.test"));
        // Unrelated names.
        assert!(c
            .check(&n("evil"), Some(&g2), &d("victimtest.test"))
            .is_ok());
        assert!(c
            .check(&n("evil"), Some(&g2), &d("other.shop.test"))
            .is_ok());
        // A site's own claims never conflict with themselves.
        assert!(c.check(&n("victim"), Some(&g1), &d("victim.test")).is_ok());
    }

    #[test]
    fn public_suffixes_and_wildcards_on_them_are_refused() {
        let c = Claims::default();
        for s in ["co.uk", "*.co.uk", "*.com", "github.io", "*.github.io"] {
            let dom: Result<Domain, _> = s.parse();
            if let Ok(dom) = dom {
                assert!(
                    c.check(&n("s"), None, &dom)
                        .unwrap_err()
                        .contains("public suffix"),
                    "{s}"
                );
            }
        }
        assert!(c.check(&n("s"), None, &d("example.co.uk")).is_ok());
        assert!(c.check(&n("s"), None, &d("*.example.co.uk")).is_ok());
        assert!(c.check(&n("s"), None, &d("me.github.io")).is_ok());
    }
}
