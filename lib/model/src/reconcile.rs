//! The one reconcile engine: desired state (from a directory of files) against
//! what runs, as a list of actions. Pure; the emperor and the vassal each carry
//! the actions out their own way.

use std::collections::BTreeMap;

/// What to do to one supervised thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<K> {
    /// It runs but is no longer wanted.
    Stop(K),
    /// Its configuration changed in a way that needs a new process.
    Restart(K),
    /// Its configuration changed in a way that can be applied in place.
    Update(K),
    /// It is wanted but does not run.
    Start(K),
}

/// Compares `desired` with `running` and returns the actions, stops first, then
/// restarts, updates and starts (each in key order). `needs_restart(old, new)`
/// tells a restart from an in-place update; equal configurations need nothing.
pub fn plan<K: Ord + Clone, C: PartialEq>(
    desired: &BTreeMap<K, C>,
    running: &BTreeMap<K, C>,
    needs_restart: impl Fn(&C, &C) -> bool,
) -> Vec<Action<K>> {
    let mut stops = Vec::new();
    let mut restarts = Vec::new();
    let mut updates = Vec::new();
    let mut starts = Vec::new();
    for (k, old) in running {
        match desired.get(k) {
            None => stops.push(Action::Stop(k.clone())),
            Some(new) if new == old => {}
            Some(new) if needs_restart(old, new) => restarts.push(Action::Restart(k.clone())),
            Some(_) => updates.push(Action::Update(k.clone())),
        }
    }
    for k in desired.keys() {
        if !running.contains_key(k) {
            starts.push(Action::Start(k.clone()));
        }
    }
    stops
        .into_iter()
        .chain(restarts)
        .chain(updates)
        .chain(starts)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_each_kind_of_change() {
        let desired = BTreeMap::from([("a", (1, 1)), ("b", (2, 9)), ("c", (3, 3)), ("e", (5, 5))]);
        let running = BTreeMap::from([("a", (1, 1)), ("b", (2, 2)), ("c", (9, 3)), ("d", (4, 4))]);
        // A change of the first field needs a restart; of the second, an update.
        let got = plan(&desired, &running, |o, n| o.0 != n.0);
        assert_eq!(
            got,
            [
                Action::Stop("d"),
                Action::Restart("c"),
                Action::Update("b"),
                Action::Start("e")
            ]
        );
        assert!(plan(&desired, &desired, |_, _| true).is_empty());
    }
}
