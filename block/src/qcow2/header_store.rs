//! The header as the open image keeps it, and the one way to change it on
//! disk: patch the fields, write them, flush. Changes are serialized, so
//! two of them never write each other's stale copy.

use std::sync::Arc;

use tokio::sync::Mutex;

use super::child::BlockChild;
use super::header::{BitmapsExtension, Header, ImageHeader};
use crate::error::BlockResult;

pub struct HeaderStore {
    file: Arc<dyn BlockChild>,
    image: Mutex<ImageHeader>,
}

impl HeaderStore {
    pub fn new(file: Arc<dyn BlockChild>, image: ImageHeader) -> Self {
        HeaderStore {
            file,
            image: Mutex::new(image),
        }
    }

    /// Takes the header just read from the disk (another process may have
    /// changed it, see [`super::activation`]).
    pub async fn replace(&self, image: ImageHeader) {
        *self.image.lock().await = image;
    }

    /// A copy of the current fields.
    pub async fn get(&self) -> Header {
        self.image.lock().await.header.clone()
    }

    /// Applies `change` and makes it durable. Whatever the header now
    /// points to must already be on disk (the caller flushed). On failure
    /// the in-memory header stays as it was.
    pub async fn update(&self, change: impl FnOnce(&mut Header)) -> BlockResult<()> {
        let mut image = self.image.lock().await;
        let old = image.header.clone();
        change(&mut image.header);
        if image.header == old {
            return Ok(());
        }
        let bytes = image.encoded_prefix();
        let written = async {
            self.file.write_slice(0, bytes).await?;
            self.file.flush().await
        }
        .await;
        if written.is_err() {
            image.header = old;
            // Put the old fields back into the cached first cluster too.
            image.encoded_prefix();
        }
        written
    }

    /// Names another backing file (and format) in the header, or none;
    /// written and flushed before this returns.
    pub async fn change_backing_file(
        &self,
        backing_file: Option<&str>,
        backing_format: Option<&str>,
    ) -> BlockResult<()> {
        self.rewrite(|image| image.with_backing(backing_file, backing_format))
            .await
    }

    /// Points the header to another bitmap directory (`None`: none);
    /// written and flushed before this returns.
    pub async fn set_bitmaps(&self, bitmaps: Option<BitmapsExtension>) -> BlockResult<()> {
        self.rewrite(|image| image.with_bitmaps(bitmaps)).await
    }

    /// Writes the first cluster `build` makes of the current one, flushes,
    /// and keeps it.
    async fn rewrite(
        &self,
        build: impl FnOnce(&ImageHeader) -> BlockResult<Vec<u8>>,
    ) -> BlockResult<()> {
        let mut image = self.image.lock().await;
        let raw = build(&image)?;
        let parsed = ImageHeader::parse(raw.clone())?;
        self.file.write_slice(0, &raw).await?;
        self.file.flush().await?;
        *image = parsed;
        Ok(())
    }
}
