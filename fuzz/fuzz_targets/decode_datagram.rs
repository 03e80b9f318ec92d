//! Every datagram a node receives goes through `Message::decode` and, for node traffic,
//! `Msg::from_wire`; a `FRAGMENT` goes through a reassembler first, and the message it
//! completes through the same path. None of them may panic, whatever the bytes; a Raft
//! message that decodes must survive encoding and decoding again unchanged.
#![no_main]

use labctl::node::raft::Msg;
use labctl::proto::fragment::{Limits, Reassembler};
use labctl::proto::{Message, Request, MAX_DATAGRAM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok((mut msg, mut request)) = Message::decode(bytes) else { return };
    if request == Request::Fragment {
        let mut reassembler = Reassembler::new(Limits::for_messages_of(1 << 20));
        let Ok(Some(done)) = reassembler.accept(&msg, std::time::Instant::now()) else { return };
        let Ok(whole) = Message::decode_with_limit(&done.bytes, 1 << 20) else { return };
        (msg, request) = whole;
    }
    let _ = msg.leader_name();
    let _ = msg.committed_logs();
    let Ok((from, raft)) = Msg::from_wire(msg, request) else { return };
    let again = raft.to_wire(from).encode();
    if again.len() <= MAX_DATAGRAM {
        let (wire, req) = Message::decode(&again).expect("a re-encoded Raft message decodes");
        assert_eq!(Msg::from_wire(wire, req), Ok((from, raft)));
    }
});
