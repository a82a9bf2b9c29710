import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Bytes moved and the rate, redrawn in place on standard error while a
/// transfer runs — only when standard error is a terminal (scripts get the
/// final summary line, or --json, instead).
public final class TransferMeter {
    let label: String
    let started = DispatchTime.now()
    var lastDraw: UInt64 = 0
    var drawn = false

    /// nil when standard error is not a terminal.
    public init?(_ label: String, force: Bool = false) {
        guard force || isatty(2) == 1 else { return nil }
        self.label = label
    }

    /// Called with the bytes moved so far; redraws at most 4 times a second.
    public func update(_ bytes: UInt64) {
        let now = DispatchTime.now().uptimeNanoseconds
        guard now - lastDraw >= 250_000_000 else { return }
        lastDraw = now
        let seconds = Double(now - started.uptimeNanoseconds) / 1e9
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + Self.line(label, bytes: bytes, seconds: seconds)).utf8))
        drawn = true
    }

    /// Clears the line (the caller prints its summary).
    public func finish() {
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        drawn = false
    }

    /// "sending web@5: 45.2 MiB, 120.3 MiB/s".
    public static func line(_ label: String, bytes: UInt64, seconds: Double) -> String {
        let rate = seconds > 0 ? Double(bytes) / seconds : 0
        return "\(label): \(size(Double(bytes))), \(size(rate))/s"
    }

    static func size(_ v: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = v
        var i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(Int(v)) B" : String(format: "%.1f %@", v, units[i])
    }
}
