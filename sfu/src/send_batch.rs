//! Sending what one received packet caused in one system call. Every forwarded copy goes to a
//! different listener, so UDP GSO (one destination) cannot batch them; Linux's `sendmmsg` can:
//! one syscall for up to [`MAX_BATCH`] datagrams to different addresses. Elsewhere, one
//! `send_to` per datagram.

use std::io;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::node::Transmit;

/// Datagrams per `sendmmsg` call.
pub const MAX_BATCH: usize = 64;

/// Datagrams waiting to be sent, and the (reused) buffers the system call needs.
pub struct SendBatch {
    pending: Vec<Transmit>,
    #[cfg(target_os = "linux")]
    sys: Box<linux::Headers>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            pending: Vec::with_capacity(MAX_BATCH),
            #[cfg(target_os = "linux")]
            sys: Box::default(),
        }
    }
}

impl SendBatch {
    pub fn push(&mut self, t: Transmit) {
        self.pending.push(t);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Send everything queued; waits for socket space rather than dropping voice. Returns how
    /// many datagrams the kernel took (the rest failed with an error other than "full"). Each
    /// datagram's storage goes to `spent` afterwards, to be reused (`Node::recycle`).
    pub async fn send_all(&mut self, socket: &UdpSocket, mut spent: impl FnMut(Vec<u8>)) -> usize {
        let mut sent = 0;
        let mut start = 0;
        while start < self.pending.len() {
            let rest = &self.pending[start..];
            #[cfg(target_os = "linux")]
            let sys = &mut self.sys;
            let r = socket.try_io(Interest::WRITABLE, || {
                #[cfg(target_os = "linux")]
                return send_some(sys, socket, rest);
                #[cfg(not(target_os = "linux"))]
                return send_one(socket, rest);
            });
            match r {
                Ok(n) => {
                    start += n.max(1);
                    sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // This datagram cannot be sent (e.g. unreachable address): skip it.
                    tracing::debug!(error = %e, to = %self.pending[start].destination, "UDP send failed");
                    start += 1;
                }
            }
        }
        for t in self.pending.drain(..) {
            spent(t.contents);
        }
        sent
    }
}

#[cfg(target_os = "linux")]
fn send_some(
    sys: &mut linux::Headers,
    socket: &UdpSocket,
    batch: &[Transmit],
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let n = sys.fill(batch);
    // SAFETY: `fill` pointed the headers at `batch` (borrowed for this call) and at `sys`'s own
    // address storage; the kernel reads them only during the call.
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), sys.hdrs.as_mut_ptr(), n as u32, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(not(target_os = "linux"))]
fn send_one(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    let t = &batch[0];
    socket.try_send_to(&t.contents, t.destination).map(|_| 1)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::SocketAddr;

    use super::{Transmit, MAX_BATCH};

    /// `sendmmsg`'s arrays. Built once, refilled per call.
    pub struct Headers {
        addrs: [libc::sockaddr_storage; MAX_BATCH],
        iovs: [libc::iovec; MAX_BATCH],
        pub hdrs: [libc::mmsghdr; MAX_BATCH],
    }

    // SAFETY: the raw pointers inside only ever point into this struct or at the batch being
    // sent, and only during one `sendmmsg` call on the owning task.
    unsafe impl Send for Headers {}

    impl Default for Headers {
        fn default() -> Self {
            // SAFETY: all-zero is a valid value for these plain C structs (null pointers, zero
            // lengths).
            unsafe { std::mem::zeroed() }
        }
    }

    impl Headers {
        /// Point the headers at up to `MAX_BATCH` datagrams of `batch`; how many.
        pub fn fill(&mut self, batch: &[Transmit]) -> usize {
            let n = batch.len().min(MAX_BATCH);
            for (i, t) in batch[..n].iter().enumerate() {
                let len = write_addr(&t.destination, &mut self.addrs[i]);
                self.iovs[i] = libc::iovec {
                    iov_base: t.contents.as_ptr() as *mut libc::c_void,
                    iov_len: t.contents.len(),
                };
                let m = &mut self.hdrs[i].msg_hdr;
                m.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
                m.msg_namelen = len;
                m.msg_iov = &mut self.iovs[i];
                m.msg_iovlen = 1;
                m.msg_control = std::ptr::null_mut();
                m.msg_controllen = 0;
                m.msg_flags = 0;
                self.hdrs[i].msg_len = 0;
            }
            n
        }
    }

    fn write_addr(a: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
        match a {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
                let sin =
                    unsafe { &mut *(out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                };
                sin.sin_zero = [0; 8];
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe {
                    &mut *(out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6)
                };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_flowinfo = v6.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                sin6.sin6_scope_id = v6.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[tokio::test]
    async fn a_batch_reaches_every_destination_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("[::1]:0").await.ok();
        let tx6 = UdpSocket::bind("[::1]:0").await.ok();
        let mut batch = SendBatch::default();
        // More than one sendmmsg call's worth.
        for i in 0..(MAX_BATCH as u32 + 10) {
            batch.push(Transmit {
                transport: crate::node::Transport::Udp,
                destination: a.local_addr().unwrap(),
                contents: i.to_be_bytes().to_vec(),
            });
        }
        let mut spent = Vec::new();
        assert_eq!(batch.send_all(&tx, |b| spent.push(b)).await, MAX_BATCH + 10);
        assert!(batch.is_empty());
        // Every datagram's storage comes back, in the order sent.
        assert_eq!(spent.len(), MAX_BATCH + 10);
        assert_eq!(spent[3], 3u32.to_be_bytes());
        let mut buf = [0u8; 16];
        for i in 0..(MAX_BATCH as u32 + 10) {
            let (n, from) = a.recv_from(&mut buf).await.unwrap();
            assert_eq!((n, from), (4, tx.local_addr().unwrap()));
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
        }
        // IPv6 too, where the machine has it.
        if let (Some(b), Some(tx6)) = (b, tx6) {
            batch.push(Transmit {
                transport: crate::node::Transport::Udp,
                destination: b.local_addr().unwrap(),
                contents: b"six".to_vec(),
            });
            assert_eq!(batch.send_all(&tx6, drop).await, 1);
            let (n, _) = b.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"six");
        }
        let _: SocketAddr = a.local_addr().unwrap();
    }
}
