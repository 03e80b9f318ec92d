//! Every datagram a node receives goes through `Message::decode` and, for node traffic,
//! `Msg::from_wire`. Neither may panic, whatever the bytes; a Raft message that decodes must
//! survive encoding and decoding again unchanged.
#![no_main]

use labctl::node::raft::Msg;
use labctl::proto::{Message, MAX_DATAGRAM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok((msg, request)) = Message::decode(bytes) else { return };
    let _ = msg.leader_name();
    let _ = msg.committed_logs();
    let Ok((from, raft)) = Msg::from_wire(msg, request) else { return };
    let again = raft.to_wire(from).encode();
    if again.len() <= MAX_DATAGRAM {
        let (wire, req) = Message::decode(&again).expect("a re-encoded Raft message decodes");
        assert_eq!(Msg::from_wire(wire, req), Ok((from, raft)));
    }
});
