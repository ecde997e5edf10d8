//! `plab-wire`: what a hostile VM's root does on its own wire, for the isolation tests.
//! It writes hand-made Ethernet frames straight to an interface and reads everything
//! the interface receives (promiscuous), over an `AF_PACKET` socket. It needs only the C
//! library, so a test can copy it into a guest as well as run it in a container's
//! network namespace.
//!
//! ```text
//! plab-wire DEV arp OP SRC_MAC SENDER_IP TARGET_IP DST_MAC     (OP: request | reply)
//! plab-wire DEV udp SRC_MAC DST_MAC SRC_IP DST_IP DPORT TEXT [COUNT]
//! plab-wire DEV ra SRC_MAC                                     (an IPv6 router advertisement)
//! plab-wire DEV dhcp-offer SRC_MAC SRC_IP                      (a DHCP answer, to broadcast)
//! plab-wire DEV sniff SECONDS                                  (one line per frame received)
//! ```
//! A sniffed frame prints as `SRC_MAC > DST_MAC TYPE [SRC_IP > DST_IP [udp SPORT > DPORT TEXT]]`.
#![allow(clippy::unwrap_used)] // Test tool: a failed unwrap is a failed test.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    v.try_into().unwrap()
}

fn ip(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

fn show_mac(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// An `AF_PACKET` socket bound to `dev`, for every protocol.
fn socket(dev: &str) -> (OwnedFd, i32) {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(index > 0, "no interface {dev}");
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert!(r == 0, "bind: {}", std::io::Error::last_os_error());
    (fd, index)
}

fn send(dev: &str, frame: &[u8]) {
    send_n(dev, frame, 1);
}

fn send_n(dev: &str, frame: &[u8], count: usize) {
    let (fd, _) = socket(dev);
    for _ in 0..count {
        // SAFETY: frame is a valid buffer of the length given.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert!(n == frame.len() as isize, "send: {}", std::io::Error::last_os_error());
    }
    println!("sent {} bytes", frame.len() * count);
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    text: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(text.len()));
    b.write(&mut out, text).unwrap();
    out
}

fn describe(frame: &[u8]) -> String {
    if frame.len() < 14 {
        return format!("short frame of {} bytes", frame.len());
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let mut line = format!("{} > {} {ethertype:04x}", show_mac(&frame[6..12]), show_mac(&frame[0..6]));
    if ethertype == 0x0806 && frame.len() >= 42 {
        let a = &frame[14..];
        let op = u16::from_be_bytes([a[6], a[7]]);
        let sender = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
        let target = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
        line += &format!(" arp op {op} {} {sender} > {target}", show_mac(&a[8..14]));
    } else if let Ok(p) = SlicedPacket::from_ethernet(frame) {
        if let Some(NetSlice::Ipv4(v4)) = &p.net {
            let h = v4.header();
            line += &format!(" {} > {}", h.source_addr(), h.destination_addr());
        }
        if let Some(TransportSlice::Udp(u)) = &p.transport {
            line += &format!(
                " udp {} > {} {}",
                u.source_port(),
                u.destination_port(),
                String::from_utf8_lossy(u.payload()).replace(char::is_whitespace, "_")
            );
        }
    }
    line
}

fn sniff(dev: &str, secs: u64) {
    let (fd, index) = socket(dev);
    // SAFETY: packet_mreq is plain data; zero is a valid start.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = index;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: mreq is a valid packet_mreq of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            std::ptr::addr_of!(mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    assert!(r == 0, "promiscuous mode: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: tv is a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    println!("sniffing");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the sizes given.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::addr_of_mut!(from).cast(),
                &mut len,
            )
        };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        println!("{}", describe(&buf[..n as usize]));
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    match a.as_slice() {
        [dev, "arp", op, src_mac, sender_ip, target_ip, dst_mac] => {
            let op: u16 = if *op == "reply" { 2 } else { 1 };
            let (src, dst) = (mac(src_mac), mac(dst_mac));
            let target_mac = if op == 2 { dst } else { [0; 6] };
            let mut f = Vec::with_capacity(42);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
            f.extend_from_slice(&op.to_be_bytes());
            f.extend_from_slice(&src);
            f.extend_from_slice(&ip(sender_ip));
            f.extend_from_slice(&target_mac);
            f.extend_from_slice(&ip(target_ip));
            send(dev, &f);
        }
        [dev, "udp", src_mac, dst_mac, src_ip, dst_ip, dport, text, rest @ ..] => {
            let f = udp_frame(
                mac(src_mac),
                mac(dst_mac),
                ip(src_ip),
                ip(dst_ip),
                40000,
                dport.parse().unwrap(),
                text.as_bytes(),
            );
            send_n(dev, &f, rest.first().map_or(1, |c| c.parse().unwrap()));
        }
        [dev, "dhcp-offer", src_mac, src_ip] => {
            // op 2 (BOOTREPLY), an offered address, from server port 67 to client port 68.
            let mut bootp = vec![0u8; 240];
            bootp[0] = 2;
            bootp[1] = 1;
            bootp[2] = 6;
            bootp[16..20].copy_from_slice(&[10, 213, 0, 99]);
            bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
            let f = udp_frame(mac(src_mac), [0xff; 6], ip(src_ip), [255; 4], 67, 68, &bootp);
            send(dev, &f);
        }
        [dev, "ra", src_mac] => {
            let src = mac(src_mac);
            let ll: [u8; 16] =
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, src[0] ^ 2, src[1], src[2], 0xff, 0xfe, src[3], src[4], src[5]];
            let all_nodes: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            // Router advertisement: hop limit 64, lifetime 1800 s.
            let b = PacketBuilder::ethernet2(src, [0x33, 0x33, 0, 0, 0, 1]).ipv6(ll, all_nodes, 255).icmpv6_raw(
                134,
                0,
                [64, 0, 0x07, 0x08],
            );
            let body = [0u8; 8];
            let mut f = Vec::with_capacity(b.size(body.len()));
            b.write(&mut f, &body).unwrap();
            send(dev, &f);
        }
        [dev, "sniff", secs] => sniff(dev, secs.parse().unwrap()),
        _ => {
            eprintln!("usage: see the top of tests/src/bin/plab-wire.rs");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written() {
        let f =
            udp_frame(mac("02:00:0a:d5:00:02"), [0xff; 6], ip("10.213.0.2"), ip("10.213.0.1"), 40000, 9, b"hi there");
        assert_eq!(
            describe(&f),
            "02:00:0a:d5:00:02 > ff:ff:ff:ff:ff:ff 0800 10.213.0.2 > 10.213.0.1 udp 40000 > 9 hi_there"
        );
        assert_eq!(describe(&f[..10]), "short frame of 10 bytes");
    }
}
