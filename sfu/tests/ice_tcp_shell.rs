//! The shell's ICE-TCP listener on real loopback sockets: a str0m client whose only transport
//! is a TCP connection to the media port completes ICE and DTLS through the shell's framing;
//! the listener's bounds (per-address connections, frame size, time to authenticate) close
//! what they should and count it. Each test is bounded by timeouts of a few seconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lodge_sfu::ice_tcp::{IceTcpLimits, IceTcpReport};
use lodge_sfu::shell::{self, MediaSockets, SfuHandle, ShellOptions};
use lodge_sfu::tcp_framing::{self, FrameDecoder};
use lodge_sfu::{GuildId, JoinRequest, NodeConfig, NodeEvent, RoomId, UserId, VoiceFlags};
use str0m::media::{Direction, MediaKind};
use str0m::net::{DatagramRecv, Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc::UnboundedReceiver;

/// A node on loopback with an ICE-TCP listener on its UDP port's number.
async fn node(limits: IceTcpLimits) -> (SfuHandle, UnboundedReceiver<NodeEvent>) {
    // The system picks the UDP port; its TCP twin may be taken, so try a few.
    for _ in 0..16 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let Ok(tcp) = TcpListener::bind(addr).await else {
            continue;
        };
        let opts = ShellOptions {
            ice_tcp: limits,
            ..Default::default()
        };
        let sockets = MediaSockets {
            udp,
            tcp: Some(tcp),
        };
        return shell::spawn(sockets, NodeConfig::new(addr), opts).unwrap();
    }
    panic!("no UDP port whose TCP twin was free");
}

async fn ice_tcp(h: &SfuHandle) -> IceTcpReport {
    h.report().await.unwrap().ice_tcp.expect("listener on")
}

/// Until the peer closes the connection (read returns 0 or fails), at most `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_client_connects_over_the_shells_tcp_framing() {
    let (h, mut events) = node(IceTcpLimits::default()).await;
    let node_addr = h.local_addr();
    let now = Instant::now();
    let mut stream = TcpStream::connect(node_addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
    // The client's real source address is its connection's: an active candidate on it.
    let cand = Candidate::builder()
        .tcp()
        .host(local)
        .tcptype(TcpType::Active)
        .build()
        .unwrap();
    rtc.add_local_candidate(cand);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let ans = h
        .join(JoinRequest {
            room: RoomId(1),
            guild: GuildId(1),
            user: UserId(1),
            offer: offer.to_sdp_string(),
            flags: VoiceFlags {
                can_speak: true,
                ..Default::default()
            },
        })
        .await
        .unwrap();
    assert!(ans.answer.contains("tcptype passive"), "{}", ans.answer);
    rtc.sdp_api()
        .accept_answer(
            pending,
            str0m::change::SdpAnswer::from_sdp_string(&ans.answer).unwrap(),
        )
        .unwrap();

    let mut dec = FrameDecoder::new(1500);
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut connected = false;
    while !connected && Instant::now() < deadline {
        let wait = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    assert_eq!(t.proto, Protocol::Tcp, "the client has TCP only");
                    let mut framed = Vec::new();
                    tcp_framing::encode(&t.contents, &mut framed).unwrap();
                    stream.write_all(&framed).await.unwrap();
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(_) => {}
            }
        };
        let wait = wait
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => rtc.handle_input(Input::Timeout(Instant::now())).unwrap(),
            Ok(r) => {
                let n = r.unwrap();
                assert!(n > 0, "the node closed the connection");
                dec.push(&buf[..n]);
                while let Some(f) = dec.next_frame().unwrap() {
                    let input = Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Tcp,
                            source: node_addr,
                            destination: local,
                            contents: DatagramRecv::try_from(f).unwrap(),
                        },
                    );
                    rtc.handle_input(input).unwrap();
                }
            }
        }
    }
    assert!(connected, "ICE and DTLS over the node's TCP listener");
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, NodeEvent::Connected { .. }), "{ev:?}");
    let r = h.report().await.unwrap();
    assert!(r.tcp_frames_in >= 2 && r.tcp_frames_out >= 2, "{r:?}");
    let t = r.ice_tcp.unwrap();
    assert_eq!((t.connections, t.accepted), (1, 1), "{t:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn the_listener_bounds_close_and_count() {
    let limits = IceTcpLimits {
        max_connections_per_ip: 2,
        auth_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let (h, _events) = node(limits).await;
    let addr: SocketAddr = h.local_addr();

    // A length prefix beyond the frame bound closes the connection.
    let mut big = TcpStream::connect(addr).await.unwrap();
    big.write_all(&[0xFF, 0xFF, 1, 2, 3]).await.unwrap();
    assert!(closed_within(&mut big, Duration::from_secs(2)).await);
    // The media loop forgets it a moment after the socket closes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while ice_tcp(&h).await.connections > 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection is forgotten"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Two connections from 127.0.0.1 are the bound: a third is closed at once.
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    // Frames the node cannot use are counted: an empty one, junk.
    a.write_all(&[0, 0, 0, 4, b'j', b'u', b'n', b'k'])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(1)).await);
    let r = h.report().await.unwrap();
    assert_eq!(r.tcp_frames_in, 2, "{r:?}");
    let dropped: u64 = r
        .drops
        .iter()
        .filter(|(n, _)| *n == "malformed" || *n == "unknown_peer")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(dropped, 2, "{:?}", r.drops);

    // Neither passes a STUN check: both are closed after the authentication time.
    let t0 = Instant::now();
    assert!(closed_within(&mut a, Duration::from_secs(3)).await);
    assert!(closed_within(&mut b, Duration::from_secs(3)).await);
    assert!(t0.elapsed() < Duration::from_secs(3));
    let t = ice_tcp(&h).await;
    assert_eq!(t.connections, 0, "{t:?}");
    assert_eq!(t.accepted, 3, "{t:?}");
    assert_eq!(t.refused_over_limit, 1, "{t:?}");
    assert_eq!(t.closed_oversized, 1, "{t:?}");
    assert_eq!(t.closed_unauthenticated, 2, "{t:?}");
    h.shutdown().await;
}
