//! modbus-broker: reads a Modbus device's holding registers 0–9 once a second, logs each read
//! and serves the values on /metrics. See the crate documentation (src/lib.rs) for the
//! environment it reads.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use modbus_broker::{
    Device, Env, FIRST_REGISTER, Parity, REGISTER_COUNT, Settings, backoff, format_read,
    metrics::Metrics,
};
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
};
use tokio_modbus::{
    Slave,
    client::{Client, Context, Reader, rtu, tcp},
};
use tokio_serial::SerialPortBuilderExt;

/// How long a connection attempt or one read may take.
const TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let settings = match Env::from_process().and_then(|env| env.settings()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("modbus-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = Metrics::new(&settings.device.to_string());
    let listener = match TcpListener::bind(&settings.metrics_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "modbus-broker: cannot serve metrics on {}: {e}",
                settings.metrics_addr
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "modbus-broker: reading {} every {} ms; metrics on http://{}/metrics",
        settings.device,
        settings.poll_interval.as_millis(),
        listener
            .local_addr()
            .map_or(settings.metrics_addr.clone(), |a| a.to_string()),
    );
    tokio::spawn(metrics.clone().serve(listener));

    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("modbus-broker: cannot install signal handlers");
        return ExitCode::from(2);
    };
    tokio::select! {
        () = poll_forever(&settings, &metrics) => unreachable!("polling never ends"),
        _ = term.recv() => println!("modbus-broker: SIGTERM, stopping"),
        _ = int.recv() => println!("modbus-broker: SIGINT, stopping"),
    }
    ExitCode::SUCCESS
}

/// Connects, reads every interval, and on any transport failure reconnects after a backoff:
/// a device that goes away is waited for, never a reason to exit.
async fn poll_forever(settings: &Settings, metrics: &Metrics) {
    let mut failures = 0u32;
    loop {
        match connect(&settings.device).await {
            Ok(mut ctx) => {
                println!("modbus-broker: connected to {}", settings.device);
                failures = 0;
                let mut tick = tokio::time::interval(settings.poll_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let read = tokio::time::timeout(
                        TIMEOUT,
                        ctx.read_holding_registers(FIRST_REGISTER, REGISTER_COUNT),
                    )
                    .await;
                    match read {
                        Ok(Ok(Ok(values))) => {
                            metrics.read_ok(&values);
                            println!(
                                "{}: {}",
                                settings.device,
                                format_read(FIRST_REGISTER, &values)
                            );
                        }
                        // The device answered with an exception: it is there, keep the line.
                        Ok(Ok(Err(exception))) => {
                            metrics.read_failed();
                            println!("{}: read refused: {exception}", settings.device);
                        }
                        Ok(Err(e)) => {
                            metrics.read_failed();
                            println!("{}: read failed: {e}; reconnecting", settings.device);
                            break;
                        }
                        Err(_) => {
                            metrics.read_failed();
                            println!(
                                "{}: no answer in {} s; reconnecting",
                                settings.device,
                                TIMEOUT.as_secs()
                            );
                            break;
                        }
                    }
                }
                // A late reply on the old connection must not be taken for the next one.
                let _ = tokio::time::timeout(TIMEOUT, ctx.disconnect()).await;
            }
            Err(e) => {
                metrics.read_failed();
                let wait = backoff(failures);
                failures = failures.saturating_add(1);
                println!(
                    "{}: cannot connect: {e}; retrying in {} s",
                    settings.device,
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn connect(device: &Device) -> Result<Context, String> {
    match device {
        Device::Tcp { host, port, unit } => {
            let addr: SocketAddr =
                tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                    .map_err(|_| format!("resolving {host} took over {} s", TIMEOUT.as_secs()))?
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("{host} has no address"))?;
            let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| format!("no connection to {addr} in {} s", TIMEOUT.as_secs()))?
                .map_err(|e| format!("{addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            Ok(tcp::attach_slave(stream, Slave(*unit)))
        }
        Device::Rtu {
            path,
            baud_rate,
            parity,
            data_bits,
            stop_bits,
            unit,
        } => {
            let port = tokio_serial::new(path, *baud_rate)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(if *data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            Ok(rtu::attach_slave(port, Slave(*unit)))
        }
    }
}
