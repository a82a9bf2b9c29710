import FSSnapshot
import Foundation
@testable import ProcessCR
import XCTest

/// Plays back recorded CRIU packets and records what the client sends.
final class FakeTransport: CriuTransport {
    private var replies: [[UInt8]]
    /// When set, `receive` throws this once the replies before it are used up.
    var failure: Error?
    private(set) var sent: [[UInt8]] = []
    private(set) var received = 0
    private(set) var closed = false

    init(_ replies: [[UInt8]], then failure: Error? = nil) {
        self.replies = replies
        self.failure = failure
    }

    func send(_ bytes: [UInt8]) throws { sent.append(bytes) }

    func receive() throws -> [UInt8] {
        if replies.isEmpty {
            throw failure ?? SystemError("recv", "fake criu (no more recorded replies)", errno: ECONNRESET)
        }
        received += 1
        return replies.removeFirst()
    }

    func close() { closed = true }

    func sentRequests() throws -> [CriuReq] {
        try sent.map { try CriuReq(serializedBytes: $0) }
    }
}

/// Records the scripts it is notified of; throws on the one named.
final class RecordingHandler: CriuNotifyHandler {
    struct Refused: Error, Equatable { let script: String }
    var scripts: [String] = []
    var pids: [Int32] = []
    let failOn: String?

    init(failOn: String? = nil) { self.failOn = failOn }

    func criuNotify(_ script: String, pid: Int32) throws {
        scripts.append(script)
        pids.append(pid)
        if script == failOn { throw Refused(script: script) }
    }
}

final class CriuClientTests: XCTestCase {
    func dumpRequest() -> CriuReq {
        var o = CriuOpts()
        o.imagesDirFd = 7
        o.pid = 1234
        o.leaveRunning = true
        o.notifyScripts = true
        var req = CriuReq()
        req.type = .dump
        req.opts = o
        return req
    }

    func testDumpAnswersEveryNotifyWithSuccessAndReturnsFinalReply() throws {
        let t = FakeTransport(RecordedReplies.packets(RecordedReplies.dumpSuccess))
        let handler = RecordingHandler()
        let resp = try CriuClient(transport: t).call(dumpRequest(), handler: handler)

        // The real order CRIU 4.2.1 notifies in during a leave-running dump.
        XCTAssertEqual(handler.scripts, ["pre-dump", "query-ext-files", "post-dump"])
        XCTAssertEqual(resp.type, .dump)
        XCTAssertTrue(resp.success)
        XCTAssertFalse(resp.dump.restored)
        XCTAssertEqual(t.received, 4)

        let sent = try t.sentRequests()
        XCTAssertEqual(sent.count, 4, "the request, then one answer per NOTIFY")
        XCTAssertEqual(sent[0], dumpRequest())
        for answer in sent.dropFirst() {
            XCTAssertEqual(answer.type, .notify)
            XCTAssertTrue(answer.hasNotifySuccess)
            XCTAssertTrue(answer.notifySuccess)
            XCTAssertFalse(answer.hasOpts)
        }
    }

    func testNotifyWithoutHandlerIsAnsweredWithSuccess() throws {
        let t = FakeTransport(RecordedReplies.packets(RecordedReplies.dumpSuccess))
        let resp = try CriuClient(transport: t).call(dumpRequest())
        XCTAssertTrue(resp.success)
        XCTAssertEqual(try t.sentRequests().dropFirst().map(\.notifySuccess), [true, true, true])
    }

    func testHandlerThrowingOnPostDumpRefusesAndRethrows() throws {
        let t = FakeTransport(RecordedReplies.packets(RecordedReplies.dumpRefusedAtPostDump))
        let handler = RecordingHandler(failOn: "post-dump")
        XCTAssertThrowsError(try CriuClient(transport: t).call(dumpRequest(), handler: handler)) { error in
            XCTAssertEqual(error as? RecordingHandler.Refused, RecordingHandler.Refused(script: "post-dump"),
                           "the handler's own error, not CRIU's failure reply: \(error)")
        }
        XCTAssertEqual(handler.scripts, ["pre-dump", "query-ext-files", "post-dump"])
        let sent = try t.sentRequests()
        XCTAssertEqual(sent.count, 4)
        XCTAssertEqual(sent.dropFirst().map(\.type), [.notify, .notify, .notify])
        XCTAssertEqual(sent.dropFirst().map(\.notifySuccess), [true, true, false])
        XCTAssertEqual(t.received, 4, "CRIU's final answer is drained so the tasks are resumed before we report")
    }

    func testHandlerThrowingOnPreDumpStopsAtTheFirstNotify() throws {
        // Only the pre-dump NOTIFY and CRIU's failure reply are played back:
        // the client must not wait for anything after the refusal is drained.
        let recorded = RecordedReplies.packets(RecordedReplies.dumpRefusedAtPostDump)
        let t = FakeTransport([recorded[0], recorded[3]])
        let handler = RecordingHandler(failOn: "pre-dump")
        XCTAssertThrowsError(try CriuClient(transport: t).call(dumpRequest(), handler: handler)) { error in
            XCTAssertEqual(error as? RecordingHandler.Refused, RecordingHandler.Refused(script: "pre-dump"))
        }
        XCTAssertEqual(handler.scripts, ["pre-dump"])
        XCTAssertEqual(try t.sentRequests().map(\.notifySuccess), [false, false])
        XCTAssertEqual(try t.sentRequests().map(\.type), [.dump, .notify])
    }

    func testFailureReplyBecomesCriuErrorWithCriusErrnoAndMessage() throws {
        let t = FakeTransport(RecordedReplies.packets(RecordedReplies.dumpNoSuchProcess))
        let handler = RecordingHandler()
        XCTAssertThrowsError(try CriuClient(transport: t).call(dumpRequest(), handler: handler)) { error in
            guard let e = error as? CriuError else { return XCTFail("not a CriuError: \(error)") }
            XCTAssertEqual(e.request, "dump")
            XCTAssertEqual(e.errno, ESRCH)
            // CRIU's cr_errmsg is its first logged error, here the harmless
            // rlimit line every run logs on this VM: it is not shown as the cause.
            XCTAssertEqual(e.message, "")
            XCTAssertNil(e.logPath)
            XCTAssertFalse(e.description.contains("RLIMIT_NOFILE"), e.description)
            XCTAssertTrue(e.description.contains(String(cString: strerror(ESRCH))), e.description)
        }
        XCTAssertEqual(handler.scripts, ["pre-dump"])
    }

    func testFailureReplyQuotesTheErrorLinesOfTheLog() throws {
        let dir = try TempDir()
        let log = "\(dir.path)/dump.log"
        let text = """
            (00.057210) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
            (00.058000) Seizing task 4000000
            (00.058101) Error (compel/src/lib/infect.c:417): Unable to detach from 4000000: No such process
            (00.058110) Error (criu/cr-dump.c:1975): Dumping FAILED.

            """
        try text.write(toFile: log, atomically: true, encoding: .utf8)
        let t = FakeTransport(RecordedReplies.packets(RecordedReplies.dumpNoSuchProcess))
        XCTAssertThrowsError(try CriuClient(transport: t).call(dumpRequest(), logPath: log)) { error in
            guard let e = error as? CriuError else { return XCTFail("not a CriuError: \(error)") }
            XCTAssertEqual(e.logPath, log)
            XCTAssertEqual(e.logErrors.count, 2, "the harmless rlimit line is left out")
            XCTAssertFalse(e.description.contains("RLIMIT_NOFILE"), e.description)
            XCTAssertTrue(e.description.contains("Unable to detach from 4000000: No such process"), e.description)
            XCTAssertTrue(e.description.contains("(full log: \(log))"), e.description)
            XCTAssertFalse(e.description.contains("Seizing task"), e.description)
        }
    }

    func testLostConnectionMidConversationBecomesCriuError() throws {
        let recorded = RecordedReplies.packets(RecordedReplies.dumpSuccess)
        let t = FakeTransport(Array(recorded.prefix(2)),
                              then: SystemError("recv", "criu swrk (criu exited)", errno: ECONNRESET))
        let handler = RecordingHandler()
        XCTAssertThrowsError(try CriuClient(transport: t).call(dumpRequest(), handler: handler)) { error in
            guard let e = error as? CriuError else { return XCTFail("not a CriuError: \(error)") }
            XCTAssertEqual(e.request, "dump")
            XCTAssertEqual(e.errno, ECONNRESET)
            XCTAssertTrue(e.message.contains("lost the connection to criu"), e.message)
            XCTAssertTrue(e.message.contains("criu exited"), e.message)
        }
        XCTAssertEqual(handler.scripts, ["pre-dump", "query-ext-files"])
        XCTAssertEqual(try t.sentRequests().count, 3)
    }

    func testVersionReplyDecodes() throws {
        let t = FakeTransport(RecordedReplies.packets(RecordedReplies.version))
        var req = CriuReq()
        req.type = .version
        let resp = try CriuClient(transport: t).call(req)
        XCTAssertEqual(resp.type, .version)
        XCTAssertTrue(resp.success)
        XCTAssertEqual(resp.version.majorNumber, 4)
        XCTAssertEqual(resp.version.minorNumber, 2)
        XCTAssertTrue(resp.version.hasSublevel)
        XCTAssertEqual(resp.version.sublevel, 1)
        XCTAssertFalse(resp.version.hasGitid)
        let sent = try t.sentRequests()
        XCTAssertEqual(sent.count, 1)
        XCTAssertEqual(sent[0].type, .version)
        XCTAssertFalse(sent[0].hasOpts)

        let v = CriuVersionInfo(major: Int(resp.version.majorNumber), minor: Int(resp.version.minorNumber),
                                sublevel: Int(resp.version.sublevel), gitid: resp.version.gitid)
        XCTAssertEqual(v.description, "4.2.1")
        XCTAssertFalse(v < CriuVersionInfo.required)
    }

    func testCloseClosesTheTransport() {
        let t = FakeTransport([])
        CriuClient(transport: t).close()
        XCTAssertTrue(t.closed)
    }
}

final class CriuVersionInfoTests: XCTestCase {
    func v(_ major: Int, _ minor: Int, _ sublevel: Int = 0) -> CriuVersionInfo {
        CriuVersionInfo(major: major, minor: minor, sublevel: sublevel)
    }

    func testRequiredIsFourTwo() {
        let r = CriuVersionInfo.required
        XCTAssertEqual(r.major, 4)
        XCTAssertEqual(r.minor, 2)
        XCTAssertEqual(r.sublevel, 0)
        XCTAssertEqual(r.description, "4.2")
    }

    func testComparison() {
        XCTAssertLessThan(v(3, 17), v(4, 2))
        XCTAssertLessThan(v(4, 1, 1), v(4, 2))
        XCTAssertLessThan(v(4, 2), v(4, 2, 1))
        XCTAssertLessThan(v(4, 2, 1), v(4, 10))
        XCTAssertLessThan(v(4, 99, 99), v(5, 0))
        XCTAssertGreaterThan(v(5, 0), v(4, 2, 1))
        XCTAssertFalse(v(4, 2) < v(4, 2))
        XCTAssertEqual(v(4, 2, 1), v(4, 2, 1))
    }

    func testWhatDoctorAccepts() {
        // Doctor fails when `v < required`.
        XCTAssertTrue(v(3, 17) < CriuVersionInfo.required, "Debian 12's criu")
        XCTAssertTrue(v(4, 1, 1) < CriuVersionInfo.required, "Debian 13's criu")
        XCTAssertFalse(v(4, 2) < CriuVersionInfo.required)
        XCTAssertFalse(v(4, 2, 1) < CriuVersionInfo.required, "Debian sid's criu")
        XCTAssertFalse(CriuVersionInfo(major: 4, minor: 2, sublevel: 0, gitid: "abc") < CriuVersionInfo.required)
    }

    func testDescription() {
        XCTAssertEqual(v(4, 2, 1).description, "4.2.1")
        XCTAssertEqual(v(4, 2).description, "4.2")
        XCTAssertEqual(v(3, 17).description, "3.17")
    }
}

final class DumpStatsTests: XCTestCase {
    func testReadsRecordedStatsDump() throws {
        let dir = try TempDir()
        let path = try dir.write("stats-dump", RecordedReplies.bytes(RecordedReplies.statsDump))
        let s = try Checkpointer.readDumpStats(path)
        XCTAssertEqual(s.freezingMs, 0.178, accuracy: 1e-9)
        XCTAssertEqual(s.frozenMs, 5.64, accuracy: 1e-9)
        XCTAssertEqual(s.memdumpMs, 0.584, accuracy: 1e-9)
        XCTAssertEqual(s.memwriteMs, 0.172, accuracy: 1e-9)
        XCTAssertEqual(s.pagesWritten, 30)
    }

    func testTruncatedStatsDumpIsAnError() throws {
        let dir = try TempDir()
        let full = RecordedReplies.bytes(RecordedReplies.statsDump)
        let path = try dir.write("stats-dump", Array(full.dropLast(5)))
        XCTAssertThrowsError(try Checkpointer.readDumpStats(path)) { error in
            guard let e = error as? SystemError else { return XCTFail("not a SystemError: \(error)") }
            XCTAssertEqual(e.errno, EINVAL)
            XCTAssertEqual(e.subject, path)
            XCTAssertTrue(e.operation.contains("truncated"), e.operation)
        }
    }

    func testHeaderOnlyOrShortFileIsAnError() throws {
        let dir = try TempDir()
        let full = RecordedReplies.bytes(RecordedReplies.statsDump)
        for n in [0, 3, 8, 11] {
            let path = try dir.write("short-\(n)", Array(full.prefix(n)))
            XCTAssertThrowsError(try Checkpointer.readDumpStats(path), "\(n) bytes") { error in
                XCTAssertEqual((error as? SystemError)?.errno, EINVAL, "\(n) bytes: \(error)")
            }
        }
    }

    func testWrongMagicIsAnError() throws {
        let dir = try TempDir()
        var bytes = RecordedReplies.bytes(RecordedReplies.statsDump)
        bytes[4] ^= 0xFF
        let path = try dir.write("stats-dump", bytes)
        XCTAssertThrowsError(try Checkpointer.readDumpStats(path)) { error in
            XCTAssertEqual((error as? SystemError)?.errno, EINVAL, "\(error)")
        }
    }

    func testMissingFileIsAnError() throws {
        let dir = try TempDir()
        XCTAssertThrowsError(try Checkpointer.readDumpStats("\(dir.path)/stats-dump")) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOENT, "\(error)")
        }
    }
}

/// A directory under the system temp dir, removed when released.
final class TempDir {
    let path: String

    init() throws {
        path = (NSTemporaryDirectory() as NSString).appendingPathComponent("crsnap-test-" + UUID().uuidString)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let p = "\(path)/\(name)"
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
