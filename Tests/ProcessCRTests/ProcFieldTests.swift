import Foundation
@testable import ProcessCR
import XCTest

/// One reader of /proc's "Key:   value" files (status, meminfo) serves the
/// pid namespaces, the tracer, the capabilities, the memory a dump writes and
/// the memory the machine has.
final class ProcFieldTests: XCTestCase {
    let status = "Name:\tredis-server\nRss:\t  900 kB\nRssAnon:\t  2048 kB\nRssShmem:\t     4 kB\nTracerPid:\t0\nNSpid:\t4711\t1\n"

    func testAKeyIsMatchedWholeNotAsAPrefix() {
        XCTAssertEqual(Proc.field("Rss", in: status), "900 kB")
        XCTAssertEqual(Proc.field("RssAnon", in: status), "2048 kB")
        XCTAssertNil(Proc.field("Rs", in: status))
        XCTAssertNil(Proc.field("VmHWM", in: status))
    }

    func testBlanksBeforeTheValueAreDropped() {
        XCTAssertEqual(Proc.field("NSpid", in: status), "4711\t1")
        XCTAssertEqual(Proc.field("TracerPid", in: status), "0")
    }

    func testKilobytesBecomeBytes() {
        XCTAssertEqual(Proc.bytesField("RssAnon", in: status), 2048 * 1024)
        XCTAssertEqual(Proc.bytesField("MemAvailable", in: "MemTotal:       24567892 kB\nMemAvailable:   20000000 kB\n"),
                       20_000_000 * 1024)
        XCTAssertNil(Proc.bytesField("Name", in: status))
    }

    func testThisProcessHasAStatus() throws {
        let own = try XCTUnwrap(Proc.status(getpid()))
        XCTAssertEqual(Proc.nsPids(getpid()).last.map { Int($0) }, Int(String(Proc.field("NSpid", in: own)?.split(separator: "\t").last ?? "")))
        XCTAssertNotNil(Proc.bytesField("VmRSS", in: own))
    }
}
