//! A TCP forwarder on a loopback port of its own to a server on another, that a test can cut
//! (refuse new connections and drop the open ones) and restore on the same port: a broker
//! "goes away" for the operator without stopping a server that other tests share.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    target: u16,
    running: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Proxy {
    /// Forwards a free port to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        let p = Self {
            port: super::operator::free_port(),
            target,
            running: Arc::default(),
        };
        p.restore().await;
        p
    }

    /// Accepts and forwards again.
    pub async fn restore(&self) {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return;
        }
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        socket.bind(addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let target = self.target;
        *running = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Refuses new connections and drops the open ones (aborting the task drops the listener
    /// and every connection it forwards).
    pub async fn cut(&self) {
        if let Some(task) = self.running.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.try_lock()
            && let Some(task) = running.take()
        {
            task.abort();
        }
    }
}
