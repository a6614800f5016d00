//! Reading and writing `ferry/1` frames on QUIC streams.

use ferry_proto::{ErrorCode, Frame, FrameError};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

impl WireError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::Frame(e) => e.code(),
            WireError::Truncated => ErrorCode::Malformed,
            _ => ErrorCode::Internal,
        }
    }
}

fn exact(e: quinn::ReadExactError) -> WireError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => WireError::Truncated,
        quinn::ReadExactError::ReadError(e) => WireError::Read(e),
    }
}

/// The next frame, or `None` if the stream ended cleanly between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Frame>, WireError> {
    read_frame_noting(recv, || ()).await
}

/// As `read_frame`, calling `arrived` once the frame's first bytes are in.
pub async fn read_frame_noting(
    recv: &mut quinn::RecvStream,
    arrived: impl FnOnce(),
) -> Result<Option<Frame>, WireError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => arrived(),
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(exact(e)),
    }
    let len = Frame::body_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(exact)?;
    Ok(Some(Frame::decode_body(&body)?))
}

pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), WireError> {
    send.write_all(&frame.encode()).await?;
    Ok(())
}

pub fn code(c: ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(c as u32)
}
