//! The binary protocol's framing: commands, and commands with a message.
//!
//! ```text
//! simple:  [total size][command size][BaseCommand]
//! payload: [total size][command size][BaseCommand]
//!          ([0x0e02][size][BrokerEntryMetadata])?   broker entry metadata, optional
//!          ([0x0e01][CRC32-C])?                     checksum, optional
//!          [metadata size][MessageMetadata][payload]
//! ```
//!
//! Sizes are big-endian `u32`; `total size` counts everything after itself. The
//! checksum covers everything after it. Both optional parts are recognised by their
//! magic number: a broker may leave the checksum out (the protocol added it in
//! version 6, and pulsar-lite never sends it), which the `pulsar` crate 6.9.1 does not
//! accept, the reason this crate frames the protocol itself (docs/pulsar.md).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use crate::proto::{BaseCommand, MessageMetadata};

const MAGIC_CHECKSUM: u16 = 0x0e01;
const MAGIC_BROKER_ENTRY_METADATA: u16 = 0x0e02;
/// Pulsar's default `maxMessageSize` is 5 MiB; frames carry some overhead on top.
pub(crate) const DEFAULT_MAX_FRAME: usize = 5 * 1024 * 1024 + 10 * 1024;

static CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// One frame: a command, and the message it carries (SEND, MESSAGE).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub(crate) command: BaseCommand,
    pub(crate) message: Option<(MessageMetadata, Bytes)>,
}

impl Frame {
    pub(crate) fn command(command: BaseCommand) -> Self {
        Self {
            command,
            message: None,
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

impl From<prost::DecodeError> for FrameError {
    fn from(err: prost::DecodeError) -> Self {
        Self::Malformed(err.to_string())
    }
}

/// Encodes frames with a checksum; decodes frames with or without one.
#[derive(Debug)]
pub(crate) struct Codec {
    max_frame: usize,
}

impl Codec {
    pub(crate) fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Encoder<Frame> for Codec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let command_len = frame.command.encoded_len();
        let Some((metadata, payload)) = &frame.message else {
            dst.reserve(8 + command_len);
            dst.put_u32((4 + command_len) as u32);
            dst.put_u32(command_len as u32);
            frame.command.encode(dst).map_err(malformed)?;
            return Ok(());
        };
        let metadata_len = metadata.encoded_len();
        let total = 4 + command_len + 2 + 4 + 4 + metadata_len + payload.len();
        if total + 4 > self.max_frame {
            return Err(FrameError::TooLarge {
                size: total + 4,
                limit: self.max_frame,
            });
        }
        dst.reserve(total + 4);
        dst.put_u32(total as u32);
        dst.put_u32(command_len as u32);
        frame.command.encode(dst).map_err(malformed)?;
        dst.put_u16(MAGIC_CHECKSUM);
        let checksum_at = dst.len();
        dst.put_u32(0);
        let checked_from = dst.len();
        dst.put_u32(metadata_len as u32);
        metadata.encode(dst).map_err(malformed)?;
        dst.put_slice(payload);
        let checksum = CASTAGNOLI.checksum(&dst[checked_from..]);
        dst[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_be_bytes());
        Ok(())
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let total = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if total + 4 > self.max_frame {
            return Err(FrameError::TooLarge {
                size: total + 4,
                limit: self.max_frame,
            });
        }
        if src.len() < 4 + total {
            src.reserve(4 + total - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut frame = src.split_to(total).freeze();
        decode_frame(&mut frame).map(Some)
    }
}

fn decode_frame(buf: &mut Bytes) -> Result<Frame, FrameError> {
    let command_len = take_u32(buf)? as usize;
    let command = BaseCommand::decode(take(buf, command_len)?)?;
    if buf.is_empty() {
        return Ok(Frame::command(command));
    }
    if peek_u16(buf) == Some(MAGIC_BROKER_ENTRY_METADATA) {
        buf.advance(2);
        let len = take_u32(buf)? as usize;
        take(buf, len)?;
    }
    if peek_u16(buf) == Some(MAGIC_CHECKSUM) {
        buf.advance(2);
        let expected = take_u32(buf)?;
        let actual = CASTAGNOLI.checksum(buf);
        if actual != expected {
            return Err(FrameError::Malformed(format!(
                "checksum mismatch: the frame says {expected:#010x}, the bytes give {actual:#010x}"
            )));
        }
    }
    let metadata_len = take_u32(buf)? as usize;
    let metadata = MessageMetadata::decode(take(buf, metadata_len)?)?;
    Ok(Frame {
        command,
        message: Some((metadata, std::mem::take(buf))),
    })
}

fn malformed(err: prost::EncodeError) -> FrameError {
    FrameError::Malformed(err.to_string())
}

fn peek_u16(buf: &Bytes) -> Option<u16> {
    (buf.len() >= 2).then(|| u16::from_be_bytes([buf[0], buf[1]]))
}

fn take_u32(buf: &mut Bytes) -> Result<u32, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Malformed(
            "frame ends inside a size field".into(),
        ));
    }
    Ok(buf.get_u32())
}

fn take(buf: &mut Bytes, len: usize) -> Result<Bytes, FrameError> {
    if buf.len() < len {
        return Err(FrameError::Malformed(format!(
            "a field of {len} bytes runs past the end of its frame ({} left)",
            buf.len()
        )));
    }
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CommandPing, CommandSend, base_command::Type};

    fn send_frame() -> Frame {
        let command = BaseCommand {
            r#type: Type::Send as i32,
            send: Some(CommandSend {
                producer_id: 3,
                sequence_id: 42,
                ..Default::default()
            }),
            ..Default::default()
        };
        let metadata = MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 42,
            publish_time: 1,
            partition_key: Some("k".into()),
            ..Default::default()
        };
        Frame {
            command,
            message: Some((metadata, Bytes::from_static(b"payload"))),
        }
    }

    fn encode(frame: Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        Codec::new(DEFAULT_MAX_FRAME)
            .encode(frame, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn frames_round_trip_whole_and_in_pieces() {
        let ping = Frame::command(BaseCommand {
            r#type: Type::Ping as i32,
            ping: Some(CommandPing {}),
            ..Default::default()
        });
        let mut bytes = encode(send_frame());
        bytes.extend_from_slice(&encode(ping.clone()));
        let mut codec = Codec::new(DEFAULT_MAX_FRAME);
        // Byte by byte: nothing is decoded before a frame is complete.
        let mut input = BytesMut::new();
        let mut out = Vec::new();
        for byte in bytes {
            input.put_u8(byte);
            while let Some(frame) = codec.decode(&mut input).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, vec![send_frame(), ping]);
    }

    /// pulsar-lite's MESSAGE frames: no magic number, no checksum.
    #[test]
    fn a_payload_frame_without_checksum_decodes() {
        let Frame { command, message } = send_frame();
        let (metadata, payload) = message.unwrap();
        let mut body = BytesMut::new();
        body.put_u32(command.encoded_len() as u32);
        command.encode(&mut body).unwrap();
        body.put_u32(metadata.encoded_len() as u32);
        metadata.encode(&mut body).unwrap();
        body.put_slice(&payload);
        let mut input = BytesMut::new();
        input.put_u32(body.len() as u32);
        input.put_slice(&body);
        let frame = Codec::new(DEFAULT_MAX_FRAME)
            .decode(&mut input)
            .unwrap()
            .unwrap();
        assert_eq!(frame, send_frame());
    }

    #[test]
    fn broker_entry_metadata_is_skipped() {
        let encoded = encode(send_frame());
        let command_len = send_frame().command.encoded_len();
        let split = 8 + command_len;
        let mut input = BytesMut::new();
        input.put_u32((encoded.len() - 4 + 2 + 4 + 3) as u32);
        input.put_slice(&encoded[4..split]);
        input.put_u16(MAGIC_BROKER_ENTRY_METADATA);
        input.put_u32(3);
        input.put_slice(b"xyz");
        input.put_slice(&encoded[split..]);
        let frame = Codec::new(DEFAULT_MAX_FRAME)
            .decode(&mut input)
            .unwrap()
            .unwrap();
        assert_eq!(frame, send_frame());
    }

    #[test]
    fn a_corrupted_payload_fails_the_checksum() {
        let mut bytes = encode(send_frame());
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let err = Codec::new(DEFAULT_MAX_FRAME)
            .decode(&mut bytes)
            .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let mut codec = Codec::new(64);
        let mut frame = send_frame();
        frame.message.as_mut().unwrap().1 = Bytes::from(vec![0; 100]);
        let err = codec.encode(frame, &mut BytesMut::new()).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { limit: 64, .. }),
            "{err}"
        );
        let mut input = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert!(matches!(
            codec.decode(&mut input),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_field_is_malformed_not_a_panic() {
        let mut input = BytesMut::new();
        input.put_u32(6);
        input.put_u32(50);
        input.put_u16(0);
        let err = Codec::new(DEFAULT_MAX_FRAME)
            .decode(&mut input)
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }
}
