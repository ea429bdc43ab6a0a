//! A minimal NBD client speaking raw bytes, for what real clients cannot
//! send: extended headers (libnbd 1.14 predates them) and malformed input.

use std::path::Path;

use exports::nbd::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub struct Raw {
    pub stream: UnixStream,
    pub extended: bool,
}

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// The kind a simple reply shows as in a [`Chunk`].
pub const SIMPLE_REPLY: u16 = u16::MAX;

/// One reply chunk (simple replies show as kind [`SIMPLE_REPLY`], their
/// error as `data`).
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl Chunk {
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }

    /// The errno of an error chunk.
    pub fn error(&self) -> u32 {
        assert_eq!(self.kind, REPLY_TYPE_ERROR, "{self:?}");
        u32::from_be_bytes(self.data[..4].try_into().unwrap())
    }
}

impl Raw {
    /// Connects and answers the greeting with fixed newstyle and no zeroes.
    pub async fn connect(socket: &Path) -> Raw {
        let mut stream = UnixStream::connect(socket).await.expect("connect");
        let mut greeting = [0; 18];
        stream.read_exact(&mut greeting).await.expect("greeting");
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        stream
            .write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .await
            .unwrap();
        Raw {
            stream,
            extended: false,
        }
    }

    pub async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut msg = Vec::new();
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.stream.write_all(&msg).await.unwrap();
    }

    pub async fn option_reply(&mut self) -> OptReply {
        let mut head = [0; 20];
        self.stream
            .read_exact(&mut head)
            .await
            .expect("option reply");
        assert_eq!(u64::from_be_bytes(head[..8].try_into().unwrap()), REP_MAGIC);
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut data = vec![0; len as usize];
        self.stream.read_exact(&mut data).await.unwrap();
        OptReply {
            option: u32::from_be_bytes(head[8..12].try_into().unwrap()),
            kind: u32::from_be_bytes(head[12..16].try_into().unwrap()),
            data,
        }
    }

    /// Sends an option and collects replies up to the final one.
    pub async fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_option(option, data).await;
        let mut replies = Vec::new();
        loop {
            let reply = self.option_reply().await;
            let last = reply.kind == REP_ACK || reply.kind & 0x8000_0000 != 0;
            replies.push(reply);
            if last {
                return replies;
            }
        }
    }

    /// Negotiates extended headers, optionally selects `contexts`, and
    /// enters transmission on `export`; returns (size, flags).
    pub async fn go_extended(&mut self, export: &str, contexts: &[&str]) -> (u64, u16) {
        let ack = self.option(OPT_EXTENDED_HEADERS, &[]).await;
        assert_eq!(ack[0].kind, REP_ACK);
        self.extended = true;
        if !contexts.is_empty() {
            let replies = self
                .option(OPT_SET_META_CONTEXT, &meta_query(export, contexts))
                .await;
            assert_eq!(replies.len(), contexts.len() + 1, "{replies:?}");
        }
        self.go(export).await
    }

    /// `NBD_OPT_GO` on `export`; returns (size, flags).
    pub async fn go(&mut self, export: &str) -> (u64, u16) {
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let replies = self.option(OPT_GO, &data).await;
        let last = replies.last().unwrap();
        assert_eq!(last.kind, REP_ACK, "{replies:?}");
        let info = replies
            .iter()
            .find(|r| r.kind == REP_INFO && r.data[..2] == INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(info.data[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(info.data[10..12].try_into().unwrap());
        (size, flags)
    }

    /// Sends one request header (extended or compact) and its payload.
    pub async fn request(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) {
        let msg = encode_request(
            self.extended,
            flags,
            command,
            cookie,
            offset,
            length,
            payload,
        );
        self.stream.write_all(&msg).await.unwrap();
    }

    /// Reads one reply chunk (or a simple reply, as kind [`SIMPLE_REPLY`]).
    pub async fn chunk(&mut self) -> Chunk {
        let mut magic = [0; 4];
        self.stream.read_exact(&mut magic).await.expect("reply");
        match u32::from_be_bytes(magic) {
            EXTENDED_REPLY_MAGIC => {
                let mut head = [0; 28];
                self.stream.read_exact(&mut head).await.unwrap();
                let len = u64::from_be_bytes(head[20..28].try_into().unwrap());
                let mut data = vec![0; len as usize];
                self.stream.read_exact(&mut data).await.unwrap();
                Chunk {
                    flags: u16::from_be_bytes(head[..2].try_into().unwrap()),
                    kind: u16::from_be_bytes(head[2..4].try_into().unwrap()),
                    cookie: u64::from_be_bytes(head[4..12].try_into().unwrap()),
                    offset: u64::from_be_bytes(head[12..20].try_into().unwrap()),
                    data,
                }
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut head = [0; 16];
                self.stream.read_exact(&mut head).await.unwrap();
                let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
                let mut data = vec![0; len as usize];
                self.stream.read_exact(&mut data).await.unwrap();
                Chunk {
                    flags: u16::from_be_bytes(head[..2].try_into().unwrap()),
                    kind: u16::from_be_bytes(head[2..4].try_into().unwrap()),
                    cookie: u64::from_be_bytes(head[4..12].try_into().unwrap()),
                    offset: 0,
                    data,
                }
            }
            SIMPLE_REPLY_MAGIC => {
                let mut head = [0; 12];
                self.stream.read_exact(&mut head).await.unwrap();
                Chunk {
                    flags: REPLY_FLAG_DONE,
                    kind: SIMPLE_REPLY,
                    cookie: u64::from_be_bytes(head[4..12].try_into().unwrap()),
                    offset: 0,
                    data: head[..4].to_vec(),
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// Whether the server closed the connection (reads end of file).
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0; 1];
        matches!(self.stream.read(&mut byte).await, Ok(0) | Err(_))
    }
}

pub fn encode_request(
    extended: bool,
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    length: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut msg = Vec::new();
    let magic = if extended {
        EXTENDED_REQUEST_MAGIC
    } else {
        REQUEST_MAGIC
    };
    msg.extend_from_slice(&magic.to_be_bytes());
    msg.extend_from_slice(&flags.to_be_bytes());
    msg.extend_from_slice(&command.to_be_bytes());
    msg.extend_from_slice(&cookie.to_be_bytes());
    msg.extend_from_slice(&offset.to_be_bytes());
    if extended {
        msg.extend_from_slice(&length.to_be_bytes());
    } else {
        msg.extend_from_slice(&(length as u32).to_be_bytes());
    }
    msg.extend_from_slice(payload);
    msg
}

/// The data of a `NBD_OPT_{LIST,SET}_META_CONTEXT` option.
pub fn meta_query(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        data.extend_from_slice(&(q.len() as u32).to_be_bytes());
        data.extend_from_slice(q.as_bytes());
    }
    data
}
