//! TCP and UDP over loopback, traced for real on this host (as root):
//! curl against Python's HTTP server on 127.0.0.1 and ::1, and a UDP
//! request and response between two Python processes. The server is
//! started by the test, untraced: its side of each packet is seen
//! because the packets are the traced command's.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{TcpListener, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A server process of this test's, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on `addr` now (the server binds it just after).
fn free_tcp_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port(addr: &str) -> u16 {
    UdpSocket::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// For a test that needs root and these commands: true, after saying why,
/// when it cannot run.
fn skip(cmds: &[&str]) -> bool {
    if skip_without_root() {
        return true;
    }
    for c in cmds {
        if !have(c) {
            eprintln!("skipped: {c} is not installed (`cargo xtask test` installs it)");
            return true;
        }
    }
    false
}

/// Waits (at most 10 s) until `addr:port` accepts a TCP connection.
fn wait_tcp(addr: &str, port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((addr, port)).is_err() {
        assert!(
            Instant::now() < until,
            "the server on {addr}:{port} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_server(addr: &str) -> (Server, u16) {
    let port = free_tcp_port(addr);
    let child = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", addr])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server");
    let s = Server(child);
    wait_tcp(addr, port);
    (s, port)
}

fn trace_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["trace", "--format", "json"];
    all.extend_from_slice(args);
    let out = lotrace(&all);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{all:?}: {err}");
    json_lines(&out)
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == t).collect()
}

fn stages(p: &Value) -> Vec<&str> {
    p["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stage"].as_str().unwrap())
        .collect()
}

/// Every packet went out through lo and came back in through NET_RX, in
/// that order, and belongs to a flow of this trace between `addr` and
/// `port`.
fn check_packets(lines: &[Value], addr: &str, port: u16) {
    let packets = of_type(lines, "packet");
    assert!(!packets.is_empty(), "no packet: {lines:?}");
    let server = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    for p in &packets {
        let st = stages(p);
        let path = [
            "dev_queue_xmit",
            "loopback_xmit",
            "netif_rx",
            "netif_receive_skb",
        ];
        let at: Vec<usize> = path
            .iter()
            .map(|s| {
                st.iter()
                    .position(|x| x == s)
                    .unwrap_or_else(|| panic!("no {s} in {p}"))
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order: {p}");
        assert!(
            p["src"] == server.as_str() || p["dst"] == server.as_str(),
            "another flow's packet: {p}"
        );
    }
    // A receive stage in a task (the socket's backlog run at its owner's
    // release, the copy, the read's return) runs in a process that holds
    // the receiving socket: the client's and the server's processes are
    // apart here, so no process receives both ways.
    let mut readers: BTreeMap<(u64, bool), BTreeSet<u64>> = BTreeMap::new();
    for p in &packets {
        let back = p["direction"] == "back";
        for e in p["events"].as_array().unwrap() {
            let receive = [
                "tcp_rcv_established",
                "sock_deliver",
                "copy_to_user",
                "sock_recvmsg",
                "recvmsg",
            ]
            .contains(&e["stage"].as_str().unwrap());
            if receive && e["context"] == "task" {
                readers
                    .entry((p["flow"].as_u64().unwrap(), back))
                    .or_default()
                    .insert(e["tgid"].as_u64().unwrap());
            }
        }
    }
    for ((flow, back), tgids) in &readers {
        if let Some(other) = readers.get(&(*flow, !back)) {
            assert!(
                tgids.is_disjoint(other),
                "flow {flow}: both ways read by {tgids:?}"
            );
        }
    }
    let s = summary(lines);
    assert_eq!(s["lost_events"], 0, "{s}");
}

/// curl against Python's HTTP server: per connection, the handshake and
/// one exchange, its request read by the server and its response by curl.
fn curl_exchanges(addr: &str) {
    let _k = kernel_lock();
    let (_server, port) = http_server(addr);
    let host = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    };
    let url = format!("http://{host}:{port}/");
    // Python's server speaks HTTP/1.0: one connection per request.
    let pf = std::env::temp_dir().join(format!(
        "lotrace-flows-{}-{}.json",
        std::process::id(),
        port
    ));
    let pfs = pf.to_str().unwrap();
    let lines = trace_json(&[
        "--perfetto",
        pfs,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        &url,
        &url,
    ]);
    // The Perfetto trace: the segments' slices, and an arrow per exchange.
    let trace: Value = serde_json::from_str(&std::fs::read_to_string(&pf).unwrap()).unwrap();
    let _ = std::fs::remove_file(&pf);
    let evs = trace["traceEvents"].as_array().unwrap();
    assert!(evs.iter().any(|e| e["ph"] == "X" && e["cat"] == "tcp"));
    let arrows = evs
        .iter()
        .filter(|e| e["ph"] == "s" && e["cat"] == "exchange")
        .count();
    assert_eq!(arrows, 4, "two handshakes and two requests");
    check_packets(&lines, addr, port);
    let s = summary(&lines);
    assert_eq!(s["packets"]["flows"], 2, "{s}");
    let xs = of_type(&lines, "exchange");
    let hs: Vec<_> = xs.iter().filter(|x| x["kind"] == "handshake").collect();
    let rq: Vec<_> = xs.iter().filter(|x| x["kind"] == "request").collect();
    assert_eq!(hs.len(), 2, "{xs:?}");
    assert_eq!(rq.len(), 2, "{xs:?}");
    for h in &hs {
        assert!(h["total_ns"].as_u64().unwrap() > 0, "{h}");
    }
    for x in &rq {
        let (q, r) = (&x["request"], &x["response"]);
        assert!(q["bytes"].as_u64().unwrap() > 0, "{x}");
        assert!(r["bytes"].as_u64().unwrap() > 0, "{x}");
        assert_eq!(q["reach"], "read", "{x}");
        assert_eq!(r["reach"], "read", "{x}");
        assert_eq!(r["reader"]["comm"], "curl", "{x}");
        assert_eq!(q["reader"]["comm"], "python3", "{x}");
        assert!(x["server_ns"].is_u64(), "{x}");
        assert_eq!(
            x["server"].as_str().unwrap().rsplit(':').next().unwrap(),
            port.to_string()
        );
        assert!(
            x["total_ns"].as_u64().unwrap() >= q["kernel_ns"].as_u64().unwrap(),
            "{x}"
        );
    }
    // The request's first segment starts at curl's send.
    let first_data = of_type(&lines, "packet")
        .into_iter()
        .find(|p| p["payload"].as_u64().unwrap_or(0) > 0 && p["direction"] == "forth")
        .unwrap();
    let st = stages(first_data);
    assert_eq!(st[0], "sendto", "{first_data}");
    // Then TCP's send, where this kernel lets lotrace see it (the
    // tcp:tcp_sendmsg_locked tracepoint came with 6.8), and the send's
    // return.
    let seen = s["probes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["stage"] == "tcp_sendmsg" && !p["backend"].is_null());
    if seen {
        let at = |x: &str| st.iter().position(|s| *s == x);
        assert!(at("tcp_sendmsg") < at("sock_sendmsg"), "{first_data}");
        assert!(at("tcp_sendmsg").is_some(), "{first_data}");
    }
}

#[test]
fn curl_over_ipv4_pairs_each_request_with_its_response() {
    if skip(&["curl", "python3"]) {
        return;
    }
    curl_exchanges("127.0.0.1");
}

#[test]
fn curl_over_ipv6_pairs_each_request_with_its_response() {
    if skip(&["curl", "python3"]) {
        return;
    }
    curl_exchanges("::1");
}

/// A UDP echo server, answering `n` datagrams.
const UDP_ECHO: &str = "import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind(('127.0.0.1',int(sys.argv[1])))
print('ready',flush=True)
for _ in range(int(sys.argv[2])):
    d,a=s.recvfrom(2048)
    s.sendto(d.upper(),a)
";

/// A UDP client: `n` queries, each waiting for its answer.
const UDP_CLIENT: &str = "import socket,sys,time
c=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
c.settimeout(5)
for i in range(int(sys.argv[2])):
    c.sendto(b'query %d' % i,('127.0.0.1',int(sys.argv[1])))
    print(c.recvfrom(2048)[0].decode())
    time.sleep(0.02)
";

#[test]
fn udp_queries_pair_with_their_answers() {
    if skip(&["python3"]) {
        return;
    }
    let _k = kernel_lock();
    let port = free_udp_port("127.0.0.1");
    let n = 5;
    let mut child = Command::new("python3")
        .args(["-c", UDP_ECHO, &port.to_string(), &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the UDP echo server");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let _server = Server(child);
    let lines = trace_json(&[
        "python3",
        "-c",
        UDP_CLIENT,
        &port.to_string(),
        &n.to_string(),
    ]);
    check_packets(&lines, "127.0.0.1", port);
    let packets = of_type(&lines, "packet");
    assert_eq!(packets.len(), 2 * n, "{packets:?}");
    for p in &packets {
        assert_eq!(p["proto"], "udp");
        assert_eq!(p["payload"], 7, "{p}");
        // A small datagram is read without skb_copy_datagram_iter: its
        // read is the socket layer's return.
        assert_eq!(p["reach"], "read", "{p}");
        let st = stages(p);
        assert!(
            st.contains(&"sock_deliver") && st.contains(&"sock_recvmsg"),
            "{p}"
        );
    }
    let xs = of_type(&lines, "exchange");
    assert_eq!(xs.len(), n, "{xs:?}");
    for x in &xs {
        assert_eq!(x["kind"], "request");
        assert_eq!(x["request"]["bytes"], 7);
        assert_eq!(x["response"]["bytes"], 7);
        assert!(x["server_ns"].is_u64(), "{x}");
        assert_eq!(x["response"]["reader"]["comm"], "python3", "{x}");
    }
}

/// A ping's trace has no flow in it, and its summary says nothing of them.
#[test]
fn a_ping_trace_has_no_flows() {
    if skip(&["ping"]) {
        return;
    }
    let _k = kernel_lock();
    let lines = trace_json(&["ping", "-c", "2", "-i", "0.2", "127.0.0.1"]);
    assert!(of_type(&lines, "packet").is_empty());
    assert!(of_type(&lines, "exchange").is_empty());
    assert!(summary(&lines).get("packets").is_none());
}

/// An HTTP request sent and its response read by `command` (PORT in its
/// arguments becomes the server's port): the request's packets start at
/// the system call `send` names (with `payloads` bytes each), and the
/// response's read ends at `read`'s return, in a task called `reader`.
fn sent_and_read_by(command: &[&str], send: &str, payloads: &[u64], read: &str, reader: &str) {
    let _k = kernel_lock();
    let (_server, port) = http_server("127.0.0.1");
    let p = port.to_string();
    let args: Vec<String> = command.iter().map(|a| a.replace("PORT", &p)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = trace_json(&args);
    check_packets(&lines, "127.0.0.1", port);
    let with =
        |stage: &str, probe: &str| -> Vec<&Value> {
            of_type(&lines, "packet")
                .into_iter()
                .filter(|p| {
                    p["events"].as_array().unwrap().iter().any(|e| {
                        e["stage"] == stage && e["probe"].as_str().unwrap().ends_with(probe)
                    })
                })
                .collect()
        };
    let sent = with("sendto", send);
    assert!(!sent.is_empty(), "{lines:?}");
    for p in &sent {
        assert_eq!(p["direction"], "forth", "{p}");
        assert!(payloads.contains(&p["payload"].as_u64().unwrap()), "{p}");
        let st = stages(p);
        assert_eq!(st[0], "sendto", "{p}");
        assert!(st.contains(&"sock_sendmsg"), "{p}");
    }
    let got = with("recvmsg", read);
    assert!(!got.is_empty(), "{lines:?}");
    for p in &got {
        assert_eq!(p["direction"], "back", "{p}");
        assert!(
            p["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["stage"] == "recvmsg" && e["comm"] == reader),
            "{p}"
        );
    }
    let xs: Vec<_> = of_type(&lines, "exchange")
        .into_iter()
        .filter(|x| x["kind"] == "request")
        .collect();
    assert_eq!(xs.len(), 1, "{xs:?}");
    assert_eq!(xs[0]["request"]["bytes"], 18);
    assert_eq!(xs[0]["response"]["reach"], "read", "{}", xs[0]);
}

/// Sends by `write()` and reads by `read()` (bash's `/dev/tcp`, and cat).
/// bash's printf writes line by line: two writes, of 16 and 2 bytes (the
/// second's may wait for the first's ACK, Nagle, and go out from the
/// softirq that brought it, outside the write).
#[test]
fn write_and_read_are_a_send_and_a_receive() {
    if skip(&["bash", "cat", "python3"]) {
        return;
    }
    let script = "exec 3<>/dev/tcp/127.0.0.1/PORT; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3 >/dev/null";
    sent_and_read_by(
        &["bash", "-c", script],
        "sys_enter_write",
        &[16, 2],
        "sys_exit_read",
        "cat",
    );
}

/// A send by `writev()` of two buffers, one segment, and reads by
/// `readv()`.
#[test]
fn writev_and_readv_are_a_send_and_a_receive() {
    if skip(&["python3"]) {
        return;
    }
    let script = "import os,socket,sys
s=socket.create_connection(('127.0.0.1',int(sys.argv[1])))
os.writev(s.fileno(),[b'GET / HTTP/1.0\\r\\n',b'\\r\\n'])
b=bytearray(65536)
while os.readv(s.fileno(),[b]): pass
";
    sent_and_read_by(
        &["python3", "-c", script, "PORT"],
        "sys_enter_writev",
        &[18],
        "sys_exit_readv",
        "python3",
    );
}

/// A request sent by Python lines `send` (after `s` is connected to the
/// server) and its response read by `recvfrom()`: the request starts at
/// `probe`.
fn python_sends(send: &str, probe: &str) {
    if skip(&["python3"]) {
        return;
    }
    let script = format!(
        "import os,socket,sys,tempfile
s=socket.create_connection(('127.0.0.1',int(sys.argv[1])))
req=b'GET / HTTP/1.0\\r\\n\\r\\n'
{send}
while s.recv(65536): pass
"
    );
    sent_and_read_by(
        &["python3", "-c", &script, "PORT"],
        probe,
        &[18],
        "sys_exit_recvfrom",
        "python3",
    );
}

/// A send by `sendfile()` from a file (Python's `socket.sendfile`).
#[test]
fn sendfile_is_a_send() {
    python_sends(
        "f=tempfile.TemporaryFile(); f.write(req); f.seek(0)\nassert s.sendfile(f)==18",
        "sys_enter_sendfile64",
    );
}

/// A send by `splice()` from a pipe into the socket.
#[test]
fn splice_into_a_socket_is_a_send() {
    python_sends(
        "r,w=os.pipe(); os.write(w,req)\nassert os.splice(r,s.fileno(),18)==18",
        "sys_enter_splice",
    );
}

/// Python (ctypes) for `sendmmsg()` and `recvmmsg()`: their structs, and
/// a UDP socket `srv` with a client `c` connected to it.
macro_rules! mmsg_prelude {
    () => {
        "import ctypes,socket
libc=ctypes.CDLL(None,use_errno=True)
class iovec(ctypes.Structure): _fields_=[('base',ctypes.c_void_p),('len',ctypes.c_size_t)]
class msghdr(ctypes.Structure): _fields_=[('name',ctypes.c_void_p),('namelen',ctypes.c_uint),('iov',ctypes.POINTER(iovec)),('iovlen',ctypes.c_size_t),('control',ctypes.c_void_p),('controllen',ctypes.c_size_t),('flags',ctypes.c_int)]
class mmsghdr(ctypes.Structure): _fields_=[('hdr',msghdr),('len',ctypes.c_uint)]
srv=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); srv.bind(('127.0.0.1',0))
c=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); c.connect(srv.getsockname())
"
    };
}

/// Two UDP datagrams read by one `recvmmsg()` (through ctypes): the
/// call's return ends the last one, with that message's length. They are
/// large enough to be copied with `skb_copy_datagram_iter`, whose
/// tracepoint says which datagram each message took.
#[test]
fn recvmmsg_ends_its_last_message() {
    if skip(&["python3"]) {
        return;
    }
    let _k = kernel_lock();
    let lines = trace_json(&["python3", "-c", RECVMMSG]);
    let packets = of_type(&lines, "packet");
    assert_eq!(packets.len(), 2, "{lines:?}");
    let ends = |p: &Value| -> Vec<Value> {
        p["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["stage"] == "recvmsg")
            .cloned()
            .collect()
    };
    let last = packets.iter().find(|p| p["number"] == 2).unwrap();
    assert_eq!(last["payload"], 30000, "{last}");
    let end = ends(last);
    assert_eq!(end.len(), 1, "{last}");
    assert!(
        end[0]["probe"]
            .as_str()
            .unwrap()
            .ends_with("sys_exit_recvmmsg"),
        "{last}"
    );
    assert!(
        end[0]["detail"].as_str().unwrap().contains("30000"),
        "{last}"
    );
    let first = packets.iter().find(|p| p["number"] == 1).unwrap();
    assert_eq!(first["payload"], 20000, "{first}");
    assert!(ends(first).is_empty(), "{first}");
    assert_eq!(first["reach"], "read", "{first}");
}

/// Two datagrams, of 20000 and 30000 bytes, sent to a socket of the same
/// process, which takes both with one `recvmmsg()`.
const RECVMMSG: &str = concat!(
    mmsg_prelude!(),
    "c.send(b'a'*20000); c.send(b'b'*30000)
bufs=[ctypes.create_string_buffer(40000) for _ in range(2)]
iovs=[iovec(ctypes.cast(b,ctypes.c_void_p),40000) for b in bufs]
m=(mmsghdr*2)()
for i in range(2):
    m[i].hdr.iov=ctypes.pointer(iovs[i]); m[i].hdr.iovlen=1
assert libc.recvmmsg(srv.fileno(),m,2,0,None)==2
assert m[0].len==20000 and m[1].len==30000
",
);

/// A UDP send by `sendmmsg()` of two datagrams (as glibc's resolver sends
/// an A and an AAAA query): the first datagram starts at the call.
#[test]
fn sendmmsg_starts_its_first_datagram() {
    if skip(&["python3"]) {
        return;
    }
    let _k = kernel_lock();
    let lines = trace_json(&["python3", "-c", SENDMMSG]);
    let packets = of_type(&lines, "packet");
    assert_eq!(packets.len(), 2, "{lines:?}");
    let first = packets.iter().find(|p| p["number"] == 1).unwrap();
    assert_eq!(first["payload"], 3);
    let ev = &first["events"][0];
    assert_eq!(ev["stage"], "sendto", "{first}");
    assert!(
        ev["probe"]
            .as_str()
            .unwrap()
            .ends_with("sys_enter_sendmmsg"),
        "{first}"
    );
    let second = packets.iter().find(|p| p["number"] == 2).unwrap();
    assert_eq!(second["payload"], 6);
    assert!(!stages(second).contains(&"sendto"), "{second}");
}

/// Two datagrams by one `sendmmsg()` (through ctypes), to a socket of the
/// same process, which reads them.
const SENDMMSG: &str = concat!(
    mmsg_prelude!(),
    "bufs=[ctypes.create_string_buffer(b'one'),ctypes.create_string_buffer(b'second')]
iovs=[iovec(ctypes.cast(bufs[0],ctypes.c_void_p),3),iovec(ctypes.cast(bufs[1],ctypes.c_void_p),6)]
m=(mmsghdr*2)()
for i in range(2):
    m[i].hdr.iov=ctypes.pointer(iovs[i]); m[i].hdr.iovlen=1
assert libc.sendmmsg(c.fileno(),m,2,0)==2
assert srv.recv(100)==b'one' and srv.recv(100)==b'second'
",
);

/// Python's HTTP server in `ns` on `addr:port`, once it listens (at most
/// 10 s).
fn http_server_in(ns: &Netns, addr: &str, port: &str) -> Server {
    let child = ns
        .cmd(&["python3", "-m", "http.server", port, "--bind", addr])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let server = Server(child);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns
            .cmd(&["ss", "-Hltn", &format!("sport = :{port}")])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            return server;
        }
        assert!(Instant::now() < until, "the server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `compare` with a command: two curls each to 127.0.0.1, ::1 and the
/// namespace's own address on a veth, from one server listening on all
/// three. The veth's address is local: its packets go through lo too.
#[test]
fn compare_traces_a_command_per_target() {
    if skip(&["curl", "python3", "ss"]) {
        return;
    }
    let _k = kernel_lock();
    let ns = Netns::new("compare");
    ns.exec(&[
        "ip", "link", "add", "lt0", "type", "veth", "peer", "name", "lt1",
    ]);
    ns.exec(&["ip", "addr", "add", "10.201.0.1/24", "dev", "lt0"]);
    ns.exec(&["ip", "link", "set", "lt0", "up"]);
    ns.exec(&["ip", "link", "set", "lt1", "up"]);
    let port = "8766";
    let _server = http_server_in(&ns, "::", port);
    let url = format!("http://{{host}}:{port}/");
    let targets = ["127.0.0.1", "::1", "10.201.0.1"];
    let mut args = vec!["compare", "--format", "json", "--netns", &ns.0];
    args.extend(targets);
    args.extend(["--", "curl", "-s", "-o", "/dev/null", &url, &url]);
    let out = lotrace(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let cols = v["targets"].as_array().unwrap();
    assert_eq!(cols.len(), 3, "{v}");
    for (c, t) in cols.iter().zip(targets) {
        let host = if t.contains(':') {
            format!("[{t}]")
        } else {
            t.into()
        };
        assert_eq!(c["exit"], 0, "{c}");
        assert_eq!(
            c["command"],
            format!("curl -s -o /dev/null http://{host}:{port}/ http://{host}:{port}/")
        );
        let p = &c["packets"];
        assert_eq!(
            p["sent_to"],
            serde_json::json!([format!("TCP {host}:{port}")]),
            "{c}"
        );
        assert_eq!(p["flows"], 2, "{c}");
        let devs: Vec<&String> = p["devices"].as_object().unwrap().keys().collect();
        assert_eq!(devs, ["lo"], "{c}");
        let xs = p["exchanges"].as_array().unwrap();
        for kind in ["handshake", "request"] {
            let x = xs
                .iter()
                .find(|x| x["kind"] == kind)
                .unwrap_or_else(|| panic!("{c}"));
            assert_eq!(x["count"], 2, "{x}");
            assert_eq!(x["unanswered"], 0, "{x}");
            assert!(x["total_p50_ns"].as_u64().unwrap() > 0, "{x}");
        }
        let stages: Vec<&str> = p["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        for want in [
            "loopback_xmit",
            "netif_rx",
            "netif_receive_skb",
            "copy_to_user",
        ] {
            assert!(stages.contains(&want), "{want} not in {stages:?}");
        }
    }
    // The tables side by side, for one target.
    let out = lotrace(&[
        "compare",
        "--netns",
        &ns.0,
        "10.201.0.1",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "sent to",
        "TCP request exchanges",
        "tcp      loopback_xmit",
        "request: sent→arrived",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
}

/// The first data segment to the server is dropped once, on its way in
/// (nftables' input hook, in a namespace of the test's): TCP sends it
/// again, and that segment's journey names the one it repeats.
#[test]
fn a_retransmission_is_linked_to_the_segment_it_repeats() {
    if skip(&["curl", "python3", "nft", "ss"]) {
        return;
    }
    let _k = kernel_lock();
    let ns = Netns::new("rexmit");
    let port = "8765";
    let _server = http_server_in(&ns, "127.0.0.1", port);
    ns.exec(&["nft", "add", "table", "inet", "lotrace_test"]);
    ns.exec(&[
        "nft",
        "add chain inet lotrace_test in { type filter hook input priority 0 ; }",
    ]);
    // The first segment with data to the server matches (a bucket of one
    // token, refilled hourly), the others do not.
    ns.exec(&[
        "nft",
        &format!(
            "add rule inet lotrace_test in tcp dport {port} tcp flags & psh == psh limit rate 1/hour burst 1 packets drop"
        ),
    ]);
    let url = format!("http://127.0.0.1:{port}/");
    let lines = trace_json(&["--netns", &ns.0, "curl", "-s", "-o", "/dev/null", &url]);
    let packets = of_type(&lines, "packet");
    let dropped: Vec<_> = packets
        .iter()
        .filter(|p| p["reach"] == "dropped" && p["payload"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(dropped.len(), 1, "{packets:?}");
    let d = dropped[0];
    assert!(
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["stage"] == "drop"
                && e["detail"].as_str().unwrap().contains("NETFILTER_DROP")),
        "{d}"
    );
    let again: Vec<_> = packets
        .iter()
        .filter(|p| p["retransmits"] == d["number"] && p["direction"] == d["direction"])
        .collect();
    assert_eq!(again.len(), 1, "{packets:?}");
    assert_eq!(again[0]["tcp_seq"], d["tcp_seq"]);
    assert_eq!(again[0]["reach"], "read", "{}", again[0]);
    // The kernel's own word, where this kernel has the tracepoint: the
    // retransmission's journey has TCP's retransmit, the original's not.
    let seen = summary(&lines)["probes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["stage"] == "tcp_retransmit" && !p["backend"].is_null());
    if seen {
        assert!(stages(again[0]).contains(&"tcp_retransmit"), "{}", again[0]);
        assert!(!stages(d).contains(&"tcp_retransmit"), "{d}");
    }
    let xs: Vec<_> = of_type(&lines, "exchange")
        .into_iter()
        .filter(|x| x["kind"] == "request")
        .collect();
    assert_eq!(xs.len(), 1, "{xs:?}");
    assert_eq!(xs[0]["request"]["bytes"], d["payload"], "counted once");
    assert_eq!(xs[0]["request"]["reach"], "read");
}

/// A server of the test's, its output dropped.
fn spawn_server(args: &[&str]) -> Server {
    Server(
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {args:?}: {e}")),
    )
}

/// redis-cli's PING, then a bounded redis-benchmark of several clients:
/// every request is paired with its response, each read by the other
/// side, and nothing is lost.
#[test]
fn redis_requests_pair_with_their_responses() {
    if skip(&["redis-server", "redis-cli", "redis-benchmark"]) {
        return;
    }
    let _k = kernel_lock();
    let port = free_tcp_port("127.0.0.1");
    let p = port.to_string();
    let _server = spawn_server(&[
        "redis-server",
        "--port",
        &p,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    wait_tcp("127.0.0.1", port);
    let lines = trace_json(&["redis-cli", "-p", &p, "ping"]);
    check_packets(&lines, "127.0.0.1", port);
    let xs = of_type(&lines, "exchange");
    assert_eq!(xs.len(), 2, "a handshake and the PING: {xs:?}");
    let x = xs.iter().find(|x| x["kind"] == "request").unwrap();
    assert_eq!(x["request"]["reader"]["comm"], "redis-server", "{x}");
    assert_eq!(x["response"]["reader"]["comm"], "redis-cli", "{x}");
    assert_eq!(x["response"]["bytes"], 7, "+PONG and CRLF: {x}");

    let n = 10_000;
    let lines = trace_json(&[
        "redis-benchmark",
        "-p",
        &p,
        "-n",
        &n.to_string(),
        "-c",
        "4",
        "-t",
        "ping",
        "-q",
    ]);
    let s = summary(&lines);
    assert_eq!(s["lost_events"], 0, "{s}");
    let xs = of_type(&lines, "exchange");
    let requests: Vec<_> = xs.iter().filter(|x| x["kind"] == "request").collect();
    // PING_INLINE and PING_MBULK, n each, and the benchmark's own
    // requests (its CONFIG GET).
    assert!(requests.len() >= 2 * n, "{} exchanges", requests.len());
    for x in &requests {
        assert!(!x["response"].is_null(), "unanswered: {x}");
        assert_eq!(x["request"]["reach"], "read", "{x}");
        assert_eq!(x["response"]["reach"], "read", "{x}");
    }
}

/// dig's query to dnsmasq, and its answer: one UDP exchange.
#[test]
fn a_dns_query_pairs_with_its_answer() {
    if skip(&["dnsmasq", "dig"]) {
        return;
    }
    let _k = kernel_lock();
    let port = free_udp_port("127.0.0.1");
    let p = port.to_string();
    let _server = spawn_server(&[
        "dnsmasq",
        "--no-daemon",
        "--port",
        &p,
        "--listen-address",
        "127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--user=root",
        "--address=/example.test/127.0.0.9",
    ]);
    // dnsmasq answers once it is up: dig, untraced, until it does.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &p,
                "example.test",
                "+short",
                "+tries=1",
                "+time=1",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("127.0.0.9") {
            break;
        }
        assert!(Instant::now() < until, "dnsmasq never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = trace_json(&[
        "dig",
        "@127.0.0.1",
        "-p",
        &p,
        "example.test",
        "+tries=1",
        "+time=2",
    ]);
    check_packets(&lines, "127.0.0.1", port);
    let xs = of_type(&lines, "exchange");
    assert_eq!(xs.len(), 1, "{xs:?}");
    let x = xs[0];
    assert_eq!(x["proto"], "udp");
    assert_eq!(x["request"]["reach"], "read", "{x}");
    assert_eq!(x["response"]["reach"], "read", "{x}");
    assert_eq!(x["request"]["reader"]["comm"], "dnsmasq", "{x}");
    assert!(x["server_ns"].is_u64(), "{x}");
    // `compare` with dig: its query and answer in the column.
    let out = lotrace(&[
        "compare",
        "--format",
        "json",
        "127.0.0.1",
        "--",
        "dig",
        "@{}",
        "-p",
        &p,
        "example.test",
        "+tries=1",
        "+time=2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let pk = &v["targets"][0]["packets"];
    assert_eq!(
        pk["sent_to"],
        serde_json::json!([format!("UDP 127.0.0.1:{port}")]),
        "{v}"
    );
    assert_eq!(pk["count"]["udp"], 2, "{v}");
    let xs = pk["exchanges"].as_array().unwrap();
    assert_eq!(xs.len(), 1, "{v}");
    assert_eq!(
        (&xs[0]["kind"], &xs[0]["count"], &xs[0]["unanswered"]),
        (&"request".into(), &1.into(), &0.into()),
        "{v}"
    );
}

/// iperf3 for two seconds, TCP then UDP, under `--summary-only`: the
/// packets are aggregated in the kernel, per protocol and stage, with
/// nothing lost.
#[test]
fn iperf3_under_summary_only_gives_per_stage_tables() {
    if skip(&["iperf3"]) {
        return;
    }
    let _k = kernel_lock();
    for (proto, udp) in [("tcp", false), ("udp", true)] {
        let port = free_tcp_port("127.0.0.1");
        let p = port.to_string();
        let _server = spawn_server(&["iperf3", "-s", "-p", &p, "-B", "127.0.0.1"]);
        wait_tcp("127.0.0.1", port);
        let mut args = vec![
            "--summary-only",
            "iperf3",
            "-c",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "2",
        ];
        if udp {
            args.extend(["-u", "-b", "100M"]);
        }
        let lines = trace_json(&args);
        assert!(of_type(&lines, "packet").is_empty(), "nothing streamed");
        let s = summary(&lines);
        assert_eq!(s["lost_events"], 0, "{s}");
        let pk = &s["packets"];
        // The control connection is TCP in both runs.
        assert!(pk["flows"].as_u64().unwrap() >= 2, "{pk}");
        let n = pk[proto]["count"].as_u64().unwrap();
        assert!(n > 100, "{proto}: {n} packets");
        let rows = pk["stages"].as_array().unwrap();
        let count = |stage: &str| {
            rows.iter()
                .filter(|r| r["proto"] == proto && r["stage"] == stage && r["at_return"] == false)
                .map(|r| r["count"].as_u64().unwrap())
                .sum::<u64>()
        };
        // Every packet went out through lo and came back in (a TCP segment
        // GSO cut into smaller ones is freed before the driver, which
        // meets the smaller ones instead).
        // A packet in flight when the command ends may be received after
        // the programs are gone: a few, not a thousandth.
        let (tx, rx) = (count("loopback_xmit"), count("netif_receive_skb"));
        assert!(tx > 100, "{pk}");
        assert!(
            rx <= tx && tx - rx <= 2 + tx / 1000,
            "{tx} sent, {rx} received: {pk}"
        );
        assert!(count("sock_deliver") > 0, "{pk}");
    }
}

/// A server that answers one HTTP request on `port` and address, then
/// exits. On `::` it takes IPv4 too (IPV6_V6ONLY is off by default).
const ONE_REQUEST: &str = "import http.server,socket,sys
class S(http.server.HTTPServer):
    address_family = socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET
s=S((sys.argv[2],int(sys.argv[1])),http.server.SimpleHTTPRequestHandler)
s.handle_request()
";

/// Starts `lotrace trace --format json python3 -c SERVER PORT BIND` and
/// waits (at most 20 s) until `ss -Hl{tn|un}` shows the port.
// The caller waits for the trace it is given.
#[allow(clippy::zombie_processes)]
fn traced_server(server: &str, ss: &str, port: u16, bind: &str) -> Child {
    let p = port.to_string();
    let mut trace = Command::new(BIN)
        .args([
            "trace", "--format", "json", "python3", "-c", server, &p, bind,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lotrace");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let bound = Command::new("ss")
            .args([ss, &format!("sport = :{port}")])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if bound {
            return trace;
        }
        if Instant::now() > until {
            let _ = trace.kill();
            let _ = trace.wait();
            panic!("the traced server never bound its port");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server traced, its client not: a connection to the traced
/// listener is followed from the client's SYN, so the handshake and the
/// request are there, not only what the server sends.
fn traced_server_sees_connection(bind: &str) {
    if skip(&["curl", "python3", "ss"]) {
        return;
    }
    let _k = kernel_lock();
    let port = free_tcp_port(bind);
    let trace = traced_server(ONE_REQUEST, "-Hltn", port, bind);
    let url = format!("http://127.0.0.1:{port}/");
    sh(&["curl", "-s", "-o", "/dev/null", &url]);
    let out = trace.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = json_lines(&out);
    check_packets(&lines, "127.0.0.1", port);
    let xs = of_type(&lines, "exchange");
    assert_eq!(
        xs.iter().filter(|x| x["kind"] == "handshake").count(),
        1,
        "{xs:?}"
    );
    let rq: Vec<_> = xs.iter().filter(|x| x["kind"] == "request").collect();
    assert_eq!(rq.len(), 1, "{xs:?}");
    assert_eq!(rq[0]["server"], format!("127.0.0.1:{port}").as_str());
    assert_eq!(rq[0]["request"]["reader"]["comm"], "python3", "{}", rq[0]);
    assert_eq!(rq[0]["response"]["reader"]["comm"], "curl", "{}", rq[0]);
}

#[test]
fn a_traced_server_sees_its_clients_connection_whole() {
    traced_server_sees_connection("127.0.0.1");
}

/// A server on `::` takes IPv4 connections too: one to 127.0.0.1 is
/// followed from its SYN.
#[test]
fn a_traced_dual_stack_server_sees_an_ipv4_connection() {
    traced_server_sees_connection("::");
}

/// A UDP server that answers one datagram on `port` and address, then
/// exits.
const ONE_DATAGRAM: &str = "import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind((sys.argv[2],int(sys.argv[1])))
m,a=s.recvfrom(2048)
s.sendto(m.upper(),a)
";

/// A traced UDP server, its client not (this test): the server's bind
/// makes the client's first datagram the trace's, so the query is there
/// whole, read by the server, and paired with the answer.
#[test]
fn a_traced_udp_server_sees_its_clients_first_datagram() {
    if skip(&["python3", "ss"]) {
        return;
    }
    let _k = kernel_lock();
    let port = free_udp_port("127.0.0.1");
    let trace = traced_server(ONE_DATAGRAM, "-Hlun", port, "127.0.0.1");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send_to(b"query", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).expect("the answer");
    assert_eq!(&buf[..n], b"QUERY");
    let out = trace.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = json_lines(&out);
    check_packets(&lines, "127.0.0.1", port);
    let client_end = format!("127.0.0.1:{}", client.local_addr().unwrap().port());
    let query: Vec<_> = of_type(&lines, "packet")
        .into_iter()
        .filter(|p| p["src"] == client_end.as_str())
        .collect();
    assert_eq!(query.len(), 1, "{lines:?}");
    assert_eq!(query[0]["payload"], 5);
    assert!(
        query[0]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["comm"] == "python3" && e["stage"] == "sock_recvmsg"),
        "the server's read: {}",
        query[0]
    );
    let xs = of_type(&lines, "exchange");
    assert_eq!(xs.len(), 1, "{xs:?}");
    assert_eq!(xs[0]["client"], client_end.as_str());
    assert_eq!(xs[0]["request"]["bytes"], 5);
    assert_eq!(xs[0]["response"]["bytes"], 5);
}

/// A UDP server that binds, closes its socket when `{closed}` appears and
/// exits when `{done}` does (each waited for at most 20 s).
const BIND_THEN_CLOSE: &str = "import socket,sys,os,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind((sys.argv[2],int(sys.argv[1])))
end=time.time()+20
while not os.path.exists('{closed}') and time.time()<end: time.sleep(0.02)
s.close()
while not os.path.exists('{done}') and time.time()<end: time.sleep(0.02)
";

/// A port a traced process bound and closed, while it still runs, is
/// no longer its: another process's server on it, and that server's
/// client, are not followed.
#[test]
fn a_closed_udp_server_port_is_not_followed() {
    if skip(&["python3", "ss"]) {
        return;
    }
    let _k = kernel_lock();
    let dir = std::env::temp_dir().join(format!("lotrace-udp-close-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (closed, done) = (dir.join("closed"), dir.join("done"));
    let script = BIND_THEN_CLOSE
        .replace("{closed}", closed.to_str().unwrap())
        .replace("{done}", done.to_str().unwrap());
    let port = free_udp_port("127.0.0.1");
    let trace = traced_server(&script, "-Hlun", port, "127.0.0.1");
    std::fs::write(&closed, "").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let server = loop {
        if let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < until, "the traced server never closed");
        std::thread::sleep(Duration::from_millis(20));
    };
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"stray", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 64];
    let n = server.recv(&mut buf).expect("the datagram");
    assert_eq!(&buf[..n], b"stray");
    std::fs::write(&done, "").unwrap();
    let out = trace.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success());
    let lines = json_lines(&out);
    let packets = of_type(&lines, "packet");
    assert!(packets.is_empty(), "{packets:?}");
}
