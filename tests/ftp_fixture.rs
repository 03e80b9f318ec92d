//! The FTP test fixture itself: a private pure-ftpd that a real FTP client can use.

mod common;

use std::io::Cursor;
use std::net::TcpStream;

use suppaftp::types::FileType;
use suppaftp::FtpStream;

#[test]
fn a_file_uploaded_in_passive_mode_is_in_the_root_and_downloads_unchanged() {
    let Some(server) = common::ftp::start_ftp() else { return };
    let mut ftp = FtpStream::connect(server.addr()).expect("connect");
    ftp.login(server.user.as_str(), server.password.as_str()).expect("login");
    ftp.transfer_type(FileType::Binary).expect("binary mode");
    assert_eq!(ftp.pwd().unwrap(), "/", "the user is chrooted to its home");

    let body: Vec<u8> = b"{\"items\": []}\r\nline two\n\x00\xff".to_vec();
    ftp.put_file("upload.tmp", &mut Cursor::new(&body)).expect("upload");
    ftp.rename("upload.tmp", "upload.json").expect("rename");
    let back = ftp.retr_as_buffer("upload.json").expect("download").into_inner();
    assert_eq!(back, body);
    assert_eq!(std::fs::read(server.root.join("upload.json")).unwrap(), body);
    assert!(!server.root.join("upload.tmp").exists());
    ftp.quit().unwrap();
}

#[test]
fn a_wrong_password_is_refused_and_the_server_stops_on_drop() {
    let Some(server) = common::ftp::start_ftp() else { return };
    let mut ftp = FtpStream::connect(server.addr()).expect("connect");
    let err = ftp.login(server.user.as_str(), "wrong").expect_err("a wrong password must be refused");
    assert!(err.to_string().contains("530"), "{err}");

    let addr = server.addr();
    drop(server);
    assert!(TcpStream::connect(&addr).is_err(), "pure-ftpd still listens on {addr} after drop");
}

#[test]
fn a_stopped_server_starts_again_on_the_same_port_with_its_files() {
    let Some(mut server) = common::ftp::start_ftp() else { return };
    let addr = server.addr();
    server.stop();
    assert!(TcpStream::connect(&addr).is_err(), "pure-ftpd still listens on {addr} after stop");

    std::fs::write(server.root.join("later.json"), b"[]").unwrap();
    server.start_again();
    assert_eq!(server.addr(), addr);
    let mut ftp = FtpStream::connect(&addr).expect("connect after the restart");
    ftp.login(server.user.as_str(), server.password.as_str()).expect("login");
    ftp.transfer_type(FileType::Binary).expect("binary mode");
    assert_eq!(ftp.retr_as_buffer("later.json").expect("download").into_inner(), b"[]");
    ftp.quit().unwrap();
}
