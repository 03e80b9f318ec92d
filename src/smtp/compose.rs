//! Building the message: addresses checked, bodies and attachments read, MIME assembled —
//! all before any connection is made.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::SendError;

/// What the message says and to whom.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MessageArgs {
    /// Recipient, `user@host` or `"Name <user@host>"`; repeat for several
    #[arg(long, required = true, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Copy recipient, shown to everyone; repeat for several
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Vec<String>,
    /// Blind copy recipient: receives the message, named in no header; repeat for several
    #[arg(long, value_name = "ADDRESS")]
    pub bcc: Vec<String>,
    /// Subject line [default: empty]
    #[arg(long, short = 's')]
    pub subject: Option<String>,
    /// Plain-text body [default: read from stdin when no body or HTML is given]
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the plain-text body from FILE (UTF-8); `-` is stdin
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// HTML body; with a plain-text body as well, readers choose (multipart/alternative)
    #[arg(long, value_name = "HTML", conflicts_with = "html_file")]
    pub html: Option<String>,
    /// Read the HTML body from FILE (UTF-8); `-` is stdin
    #[arg(long, value_name = "FILE")]
    pub html_file: Option<PathBuf>,
    /// Attach FILE, its content type guessed from the extension; `FILE:type/subtype` sets the
    /// type (e.g. `data.bin:application/pdf`); repeat for several
    #[arg(long, value_name = "FILE[:TYPE]")]
    pub attach: Vec<String>,
}

/// Parses one address; `what` names it in the error.
pub fn mailbox(what: &str, text: &str) -> Result<Mailbox, SendError> {
    text.trim().parse::<Mailbox>().map_err(|e| {
        SendError::Input(format!("invalid {what} address {text:?} ({e}): expected user@host or \"Name <user@host>\""))
    })
}

/// One attachment, read and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentFile {
    pub path: PathBuf,
    pub content_type: String,
}

impl AttachmentFile {
    /// `FILE` or `FILE:type/subtype`. A name that exists as a file is taken whole, so a file
    /// whose name contains `:` still works.
    pub fn parse(spec: &str) -> Result<AttachmentFile, SendError> {
        let whole = Path::new(spec);
        if !whole.is_file() {
            if let Some((path, ty)) = spec.rsplit_once(':') {
                if ty.contains('/') && !path.is_empty() {
                    ContentType::parse(ty)
                        .map_err(|_| SendError::Input(format!("attachment {path}: {ty:?} is not a content type")))?;
                    return Ok(AttachmentFile { path: PathBuf::from(path), content_type: ty.trim().to_string() });
                }
            }
        }
        let content_type = mime_guess::from_path(whole).first_or_octet_stream().essence_str().to_string();
        Ok(AttachmentFile { path: whole.to_path_buf(), content_type })
    }

    fn part(&self) -> Result<SinglePart, SendError> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| SendError::Input(format!("cannot read attachment {}: {e}", self.path.display())))?;
        let name = self.path.file_name().map_or_else(|| "attachment".into(), |n| n.to_string_lossy().into_owned());
        let content_type = ContentType::parse(&self.content_type)
            .map_err(|_| SendError::Input(format!("{:?} is not a content type", self.content_type)))?;
        Ok(Attachment::new(name).body(bytes, content_type))
    }
}

/// Text from `--X` or `--X-file` (`-` meaning stdin).
fn text_of(inline: &Option<String>, file: &Option<PathBuf>, what: &str) -> Result<Option<String>, SendError> {
    if let Some(text) = inline {
        return Ok(Some(text.clone()));
    }
    let Some(path) = file else { return Ok(None) };
    let bytes = if path.as_os_str() == "-" {
        read_stdin()?
    } else {
        std::fs::read(path).map_err(|e| SendError::Input(format!("cannot read the {what} {}: {e}", path.display())))?
    };
    String::from_utf8(bytes).map(Some).map_err(|_| {
        SendError::Input(format!("the {what} {} is not UTF-8 text; send it with --attach", path.display()))
    })
}

fn read_stdin() -> Result<Vec<u8>, SendError> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Type the message; end it with Ctrl-D on a line of its own.");
    }
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).map_err(|e| SendError::Input(format!("cannot read the body from stdin: {e}")))?;
    Ok(bytes)
}

impl MessageArgs {
    /// Builds the message from `from`, reading bodies and attachments.
    pub fn build(&self, from: Mailbox) -> Result<Message, SendError> {
        let mut builder = Message::builder()
            .from(from)
            .subject(self.subject.clone().unwrap_or_default())
            .message_id(None)
            .user_agent(format!("labctl/{}", env!("CARGO_PKG_VERSION")));
        for text in &self.to {
            builder = builder.to(mailbox("recipient (--to)", text)?);
        }
        for text in &self.cc {
            builder = builder.cc(mailbox("copy (--cc)", text)?);
        }
        for text in &self.bcc {
            builder = builder.bcc(mailbox("blind copy (--bcc)", text)?);
        }
        let attachments = self.attach.iter().map(|a| AttachmentFile::parse(a)).collect::<Result<Vec<_>, _>>()?;
        let html = text_of(&self.html, &self.html_file, "HTML body")?;
        let mut text = text_of(&self.body, &self.body_file, "body")?;
        if text.is_none() && html.is_none() {
            text =
                Some(String::from_utf8(read_stdin()?).map_err(|_| {
                    SendError::Input("the body on stdin is not UTF-8 text; send it with --attach".into())
                })?);
        }
        let parts = attachments.iter().map(AttachmentFile::part).collect::<Result<Vec<_>, _>>()?;
        let body = Body::new(text, html);
        let message = if parts.is_empty() {
            match body {
                Body::Single(part) => builder.singlepart(part),
                Body::Alternative(multi) => builder.multipart(multi),
            }
        } else {
            let mixed = MultiPart::mixed();
            let mut mixed = match body {
                Body::Single(part) => mixed.singlepart(part),
                Body::Alternative(multi) => mixed.multipart(multi),
            };
            for part in parts {
                mixed = mixed.singlepart(part);
            }
            builder.multipart(mixed)
        };
        message.map_err(|e| SendError::Input(format!("cannot build the message: {e}")))
    }
}

/// The readable part of a message.
enum Body {
    Single(SinglePart),
    Alternative(MultiPart),
}

impl Body {
    /// Plain text, HTML, or both as alternatives; with neither, an empty text.
    fn new(text: Option<String>, html: Option<String>) -> Body {
        match (text, html) {
            (Some(text), Some(html)) => Body::Alternative(MultiPart::alternative_plain_html(text, html)),
            (None, Some(html)) => Body::Single(SinglePart::html(html)),
            (text, None) => Body::Single(SinglePart::plain(text.unwrap_or_default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(mailbox("x", "a@example.com").unwrap().email.to_string(), "a@example.com");
        let named = mailbox("x", "Ann Example <ann@example.com>").unwrap();
        assert_eq!(named.name.as_deref(), Some("Ann Example"));
        for bad in ["", "ann", "ann@", "@example.com", "ann@@example.com", "ann example@x.org", "<ann@x.org"] {
            let err = mailbox("recipient (--to)", bad).unwrap_err();
            assert!(matches!(err, SendError::Input(_)), "{bad:?}");
            assert!(err.to_string().contains("invalid recipient (--to) address"), "{err}");
        }
    }

    #[test]
    fn attachment_types_are_guessed_or_given() {
        let dir = tempfile::tempdir().unwrap();
        let pdf = dir.path().join("report.pdf");
        std::fs::write(&pdf, b"%PDF").unwrap();
        let a = AttachmentFile::parse(pdf.to_str().unwrap()).unwrap();
        assert_eq!(a.content_type, "application/pdf");
        assert_eq!(AttachmentFile::parse("x/data.csv").unwrap().content_type, "text/csv");
        assert_eq!(AttachmentFile::parse("blob").unwrap().content_type, "application/octet-stream");
        let forced = AttachmentFile::parse("x/data.bin:image/png").unwrap();
        assert_eq!((forced.path, forced.content_type.as_str()), (PathBuf::from("x/data.bin"), "image/png"));
        // A file whose name has a colon is taken whole when it exists.
        let odd = dir.path().join("a:b.txt");
        std::fs::write(&odd, b"x").unwrap();
        let a = AttachmentFile::parse(odd.to_str().unwrap()).unwrap();
        assert_eq!((a.path, a.content_type.as_str()), (odd, "text/plain"));
        assert!(AttachmentFile::parse("x.bin:not/a type").is_err());
    }
}
