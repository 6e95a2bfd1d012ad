//! Links, addresses and routes through rtnetlink, blocking, one request at a time.
//!
//! A site's network is a veth pair: one end (`eth0`) made directly inside the
//! site's network namespace, the other a port of the host's bridge with the
//! kernel's port isolation on, so that two sites never exchange a frame. The
//! messages come from `netlink-packet-route`; this module only sends them and
//! reads the kernel's answer.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The longest answer the kernel gives to one of these requests.
const ANSWER_MAX: usize = 64 * 1024;

/// A blocking rtnetlink socket, bound to the network namespace it was made in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in this thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_ext_ack(true).ok();
        Ok(Netlink { sock, seq: 0 })
    }

    /// A socket in the namespace `ns` (a socket stays in the namespace it was
    /// made in): made by a short-lived thread that joins `ns`, so that no
    /// thread of the caller ever changes namespace.
    pub fn open_in(ns: BorrowedFd<'_>) -> io::Result<Netlink> {
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Netlink::open()
            })
            .join()
            .map_err(|_| io::Error::other("netlink thread panicked"))?
        })
    }

    /// Sends one message with the next sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(())
    }

    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(msg, NLM_F_ACK | flags)?;
        let mut answer = vec![0u8; ANSWER_MAX];
        loop {
            let n = self.sock.recv(&mut &mut answer[..], 0)?;
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(e) = reply.payload {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }

    /// Makes the bridge `name` unless it exists, and brings it up. Its index.
    ///
    /// Its hardware address is set, not left to the kernel: a bridge whose
    /// address was never set takes the lowest of its ports', so a new site
    /// whose veth end drew a lower one would change the gateway's address
    /// under every other site, whose cached neighbour entries would send to
    /// the old one (dropped) until they expire. A new bridge gets
    /// `02:69:6d:70:<k>` (`k`: its name's number; the address never leaves
    /// the host); one found keeps the address it has, now set.
    pub fn ensure_bridge(&mut self, name: &str) -> io::Result<u32> {
        if self.index(name)?.is_none() {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.into()));
            m.attributes
                .push(LinkAttribute::Address(bridge_address(name).to_vec()));
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            match self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        let (index, address) = self
            .link(name)?
            .ok_or_else(|| io::Error::other(format!("bridge {name} vanished")))?;
        // Set as it is (a bridge made before, or by hand): pinned from now on.
        if let Some(address) = address {
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.attributes.push(LinkAttribute::Address(address));
            self.request(RouteNetlinkMessage::SetLink(m), 0)?;
        }
        self.set_up(index)?;
        Ok(index)
    }

    /// Makes a veth pair: `host` here, `peer` made directly inside the namespace `ns`.
    pub fn add_veth_into(&mut self, host: &str, peer: &str, ns: BorrowedFd<'_>) -> io::Result<u32> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.into()));
        p.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.into()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)?;
        self.index(host)?
            .ok_or_else(|| io::Error::other(format!("veth {host} vanished")))
    }

    /// Makes link `index` an isolated port of bridge `bridge`, and brings it up.
    pub fn attach_isolated(&mut self, index: u32, bridge: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(bridge));
        self.request(RouteNetlinkMessage::SetLink(m), 0)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                true,
            )])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), 0)?;
        self.set_up(index)
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Removes link `index` (a veth takes its peer with it).
    pub fn delete(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), 0)
    }

    /// Adds `addr/prefix` to link `index` (IPv6 without duplicate detection:
    /// the plan hands out each address once, and it is usable at once).
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.header.family = family(addr);
        m.attributes.push(AddressAttribute::Local(addr));
        m.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Routes `dst/len` to link `index` directly (no gateway); one already
    /// there is left as it is.
    pub fn add_link_route(&mut self, index: u32, dst: IpAddr, len: u8) -> io::Result<()> {
        let attrs = vec![
            RouteAttribute::Destination(route_address(dst)),
            RouteAttribute::Oif(index),
        ];
        match self.add_route(family(dst), len, RouteScope::Link, attrs) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Adds the default route through `gateway`.
    pub fn add_default_route(&mut self, gateway: IpAddr) -> io::Result<()> {
        let attrs = vec![RouteAttribute::Gateway(route_address(gateway))];
        self.add_route(family(gateway), 0, RouteScope::Universe, attrs)
    }

    /// A static unicast route of the main table.
    fn add_route(
        &mut self,
        family: AddressFamily,
        len: u8,
        scope: RouteScope,
        attributes: Vec<RouteAttribute>,
    ) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.destination_prefix_length = len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = scope;
        m.header.kind = RouteType::Unicast;
        m.attributes = attributes;
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
    }
}

fn route_address(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// One site's link: the host end's name, the addresses inside and their gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteLink {
    /// The host end of the veth pair (15 bytes at most).
    pub host_name: String,
    /// The site's IPv4 address and the pool's prefix length.
    pub v4: (Ipv4Addr, u8),
    /// The host's address on the bridge.
    pub gateway4: Ipv4Addr,
    /// The site's IPv6 address and prefix length, with the host's, if any.
    pub v6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
}

/// Gives the namespace `ns` its `eth0` on `bridge` with `link`'s addresses
/// and default routes. A leftover host end of the same name (a container
/// that is still going away) is removed first.
pub fn attach_site(
    host: &mut Netlink,
    bridge: u32,
    ns: BorrowedFd<'_>,
    link: &SiteLink,
) -> io::Result<()> {
    if let Some(old) = host.index(&link.host_name)? {
        host.delete(old)?;
    }
    let index = host.add_veth_into(&link.host_name, "eth0", ns)?;
    let inside = (|| {
        host.attach_isolated(index, bridge)?;
        let mut inner = Netlink::open_in(ns)?;
        let eth0 = inner
            .index("eth0")?
            .ok_or_else(|| io::Error::other("eth0 did not reach the namespace"))?;
        inner.add_address(eth0, IpAddr::V4(link.v4.0), link.v4.1)?;
        if let Some((addr, prefix, _)) = link.v6 {
            inner.add_address(eth0, IpAddr::V6(addr), prefix)?;
        }
        inner.set_up(eth0)?;
        inner.add_default_route(IpAddr::V4(link.gateway4))?;
        if let Some((_, _, gw)) = link.v6 {
            inner.add_default_route(IpAddr::V6(gw))?;
        }
        Ok(())
    })();
    if inside.is_err() {
        let _ = host.delete(index);
    }
    inside
}

/// The address a new bridge is given: locally administered, its last two
/// bytes the number at the end of its name.
fn bridge_address(name: &str) -> [u8; 6] {
    let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    let k: u16 = digits.parse().unwrap_or(0);
    let [hi, lo] = k.to_be_bytes();
    [0x02, 0x69, 0x6d, 0x70, hi, lo]
}

impl Netlink {
    /// The index of the link `name` in this socket's namespace, if there is one.
    pub fn index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.link(name)?.map(|(index, _)| index))
    }

    /// The index and hardware address of the link `name`, if there is one.
    fn link(&mut self, name: &str) -> io::Result<Option<(u32, Option<Vec<u8>>)>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        self.send(RouteNetlinkMessage::GetLink(m), 0)?;
        let mut answer = vec![0u8; ANSWER_MAX];
        let n = self.sock.recv(&mut &mut answer[..], 0)?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                let address = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(a) => Some(a.clone()),
                    _ => None,
                });
                Ok(Some((l.header.index, address)))
            }
            NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                Some(libc::ENODEV) => Ok(None),
                Some(code) => Err(io::Error::from_raw_os_error(code)),
                None => Ok(None),
            },
            _ => Err(io::Error::other("unexpected answer to a link query")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    /// A fresh network namespace, made by a thread that then ends.
    fn fresh_ns() -> OwnedFd {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
        })
        .join()
        .unwrap()
    }

    /// A port of `bridge` whose own address is `mac`.
    fn port_with_address(host: &mut Netlink, bridge: u32, name: &str, mac: [u8; 6]) -> OwnedFd {
        let ns = fresh_ns();
        let index = host.add_veth_into(name, "eth0", ns.as_fd()).unwrap();
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        host.request(RouteNetlinkMessage::SetLink(m), 0).unwrap();
        host.attach_isolated(index, bridge).unwrap();
        ns
    }

    #[test]
    #[ignore = "root: run the README's test command"]
    fn root_a_bridges_address_stays_when_a_port_with_a_lower_one_joins() {
        let host_ns = fresh_ns();
        let mut host = Netlink::open_in(host_ns.as_fd()).unwrap();
        let address = |host: &mut Netlink, name: &str| host.link(name).unwrap().unwrap().1.unwrap();
        // A new bridge: its own address.
        let bridge = host.ensure_bridge("imptest0").unwrap();
        assert_eq!(address(&mut host, "imptest0"), bridge_address("imptest0"));
        assert_eq!(bridge_address("imperium12"), [2, 0x69, 0x6d, 0x70, 0, 12]);
        let _a = port_with_address(&mut host, bridge, "imptest-a", [2, 0, 0, 0, 0, 9]);
        let _b = port_with_address(&mut host, bridge, "imptest-b", [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            address(&mut host, "imptest0"),
            bridge_address("imptest0"),
            "a port's lower address became the bridge's"
        );
        // A bridge made before (its address the kernel's choice) keeps it.
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName("imptest1".into()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        host.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .unwrap();
        let before = address(&mut host, "imptest1");
        let old = host.ensure_bridge("imptest1").unwrap();
        assert_eq!(address(&mut host, "imptest1"), before);
        let _c = port_with_address(&mut host, old, "imptest-c", [2, 0, 0, 0, 0, 1]);
        assert_eq!(address(&mut host, "imptest1"), before);
    }

    #[test]
    #[ignore = "root: run the README's test command"]
    fn root_a_site_gets_eth0_on_an_isolated_bridge_port() {
        // Both ends in namespaces of the test's own: the host's network is untouched.
        let (host_ns, site_ns) = (fresh_ns(), fresh_ns());
        let mut host = Netlink::open_in(host_ns.as_fd()).unwrap();
        let bridge = host.ensure_bridge("imptest0").unwrap();
        assert_eq!(host.ensure_bridge("imptest0").unwrap(), bridge, "made once");
        host.add_address(bridge, "10.199.0.1".parse().unwrap(), 16)
            .unwrap();
        let link = SiteLink {
            host_name: "imptest-a".into(),
            v4: ("10.199.0.2".parse().unwrap(), 16),
            gateway4: "10.199.0.1".parse().unwrap(),
            v6: Some((
                "fd69:6d70:6572::2".parse().unwrap(),
                64,
                "fd69:6d70:6572::1".parse().unwrap(),
            )),
        };
        attach_site(&mut host, bridge, site_ns.as_fd(), &link).unwrap();
        let mut inside = Netlink::open_in(site_ns.as_fd()).unwrap();
        assert!(inside.index("eth0").unwrap().is_some(), "eth0 inside");
        assert!(
            host.index("eth0").unwrap().is_none(),
            "not on the host side"
        );
        let first = host.index("imptest-a").unwrap().expect("host end");
        // Again for a new namespace (a restart while the old container is
        // still going away): the old pair is replaced.
        let site2 = fresh_ns();
        attach_site(&mut host, bridge, site2.as_fd(), &link).unwrap();
        let second = host.index("imptest-a").unwrap().expect("host end");
        assert_ne!(first, second, "a new pair");
        assert!(
            inside.index("eth0").unwrap().is_none(),
            "the old pair is gone"
        );
    }
}
