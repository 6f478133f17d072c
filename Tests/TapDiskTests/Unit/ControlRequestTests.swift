import Testing

@testable import TapDisk

private func parseRequest(_ text: String) -> Result<ControlRequest, ControlRequest.TaggedError> {
    ControlRequest.parse(Array(text.utf8))
}

private func request(_ text: String) throws -> ControlRequest {
    try parseRequest(text).get()
}

private func failure(_ text: String) -> ControlRequest.TaggedError? {
    failure(Array(text.utf8))
}

private func failure(_ bytes: [UInt8]) -> ControlRequest.TaggedError? {
    if case .failure(let failure) = ControlRequest.parse(bytes) { return failure }
    return nil
}

/// A serialized reply as text, for exact comparisons.
private func replyText(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

@Suite struct ControlRequestParseTests {
    @Test func minimalRequest() throws {
        let parsed = try request(#"{"cmd":"info"}"#)
        #expect(parsed.command == "info")
        #expect(parsed.tag == nil)
        #expect(parsed.arguments.keys == ["cmd"])
    }

    @Test func unknownKeysAreIgnoredAndKept() throws {
        let parsed = try request(#"{"x-future":[1,{"y":null}],"cmd":"status","tag":3,"z":{}}"#)
        #expect(parsed.command == "status")
        #expect(parsed.tag == 3)
        #expect(parsed.arguments["x-future"] == [1, ["y": .null]])
    }

    @Test(arguments: [
        "",
        " ",
        "not json",
        "{",
        #"{"cmd":"info",}"#,
        #"{"cmd":"info"} x"#,
        #"{"cmd":"info"}{"cmd":"info"}"#,
        "[]",
        #"["cmd","info"]"#,
        #""cmd""#,
        "42",
        "null",
        "true",
        #"{"cmd":"info","n":01}"#,
        #"{"cmd":"info","n":NaN}"#,
        #"{"cmd":"info","n":+1}"#,
        #"{"cmd":"info","n":.5}"#,
        #"{"cmd":"info","n":1.}"#,
        #"{"cmd":"in\uD800fo"}"#,
        "{\"cmd\":\"in\u{1}fo\"}",
    ])
    func malformedIsBadRequestWithoutTag(_ text: String) {
        let failure = failure(text)
        #expect(failure?.error.code == .badRequest, "\(text.debugDescription)")
        #expect(failure?.tag == nil)
    }

    @Test func invalidUTF8IsBadRequest() {
        let prefix = Array(#"{"cmd":"info","tag":1,"x":""#.utf8)
        for sequence: [UInt8] in [
            [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82], [0xFF],
        ] {
            let failure = failure(prefix + sequence + Array("\"}".utf8))
            #expect(failure?.error.code == .badRequest)
            #expect(failure?.tag == nil)
        }
    }

    @Test func emptyAndOversizedDatagrams() throws {
        #expect(failure([]) == ControlRequest.TaggedError(.badRequest("empty datagram"), tag: nil))
        #expect(
            ControlRequest.parse(UnsafeRawBufferPointer(start: nil, count: 0)).failureCode == .badRequest)

        // Exactly 65536 bytes is still one legal datagram.
        let head = #"{"cmd":"info","tag":7"#
        let padded =
            head + String(repeating: " ", count: ControlRequest.maxDatagramSize - head.utf8.count - 1)
            + "}"
        #expect(padded.utf8.count == ControlRequest.maxDatagramSize)
        #expect(try request(padded).tag == 7)

        let oversized =
            head + String(repeating: " ", count: ControlRequest.maxDatagramSize - head.utf8.count) + "}"
        let failure = failure(oversized)
        #expect(failure?.error.code == .badRequest)
        #expect(failure?.tag == nil)
    }

    @Test(
        arguments: [
            (#"{"tag":5}"#, JSONValue?.some(5)),
            (#"{"cmd":null,"tag":"t"}"#, "t"),
            (#"{"cmd":1,"tag":null}"#, .null),
            (#"{"cmd":true}"#, nil),
            (#"{"cmd":["info"],"tag":false}"#, false),
            (#"{"cmd":{"name":"info"},"tag":1.5}"#, 1.5),
            (#"{"CMD":"info","tag":-0}"#, .number(JSONNumber("-0")!)),
        ] as [(String, JSONValue?)])
    func missingOrMistypedCommandEchoesTag(_ text: String, _ tag: JSONValue?) {
        let failure = failure(text)
        #expect(failure?.error.code == .badRequest)
        #expect(failure?.tag == tag)
    }

    @Test func commandIsNotInterpretedHere() throws {
        // Unknown commands are the dispatcher's business (unknown-command), not a parse error.
        #expect(try request(#"{"cmd":"frobnicate"}"#).command == "frobnicate")
        #expect(try request(#"{"cmd":""}"#).command == "")
    }
}

@Suite struct ControlRequestTagTests {
    @Test(arguments: [
        #"null"#, #"true"#, #"false"#, #"0"#, #"-0"#, #"1.50"#, #"-12.5e+3"#, #"1E2"#,
        #"123456789012345678901234567890"#, #"-123456789012345678901234567890"#,
        #"18446744073709551616"#, #""""#, #""abc""#, #""\"\\\n\t\u0001""#, #""héllo 😀 €""#,
        #"1e-999"#,
    ])
    func tagEchoesExactly(_ token: String) throws {
        let parsed = try request(#"{"cmd":"info","tag":"# + token + "}")
        let tag = try #require(parsed.tag)
        #expect(tag == (try JSONParser.parse(token)))

        let ok = ControlReply.ok(fields: ["state": "idle"], tag: tag)
        let okValue = try JSONParser.parse(ok)
        #expect(okValue["tag"] == tag)
        #expect(okValue["ok"] == true)

        let error = ControlReply.error(.wrongState("not paused"), tag: tag)
        #expect(try JSONParser.parse(error)["tag"] == tag)

        // Numbers, literals and escape-free strings come back byte for byte.
        if !token.contains("\\") {
            #expect(replyText(ok).hasSuffix(#","tag":"# + token + "}"))
            #expect(replyText(error).hasSuffix(#","tag":"# + token + "}"))
        }
    }

    @Test func escapedStringTagKeepsItsValue() throws {
        let tag = try #require(try request(#"{"cmd":"x","tag":"\u00e9\/\ud83d\ude00\n"}"#).tag)
        #expect(tag == .string("é/😀\n"))
        #expect(replyText(ControlReply.ok(tag: tag)) == #"{"ok":true,"tag":"é/😀\n"}"#)
    }

    @Test func absentAndNullTagsDiffer() throws {
        let absent = try request(#"{"cmd":"info"}"#)
        let null = try request(#"{"cmd":"info","tag":null}"#)
        #expect(absent.tag == nil)
        #expect(null.tag == .null)
        #expect(replyText(ControlReply.ok(tag: absent.tag)) == #"{"ok":true}"#)
        #expect(replyText(ControlReply.ok(tag: null.tag)) == #"{"ok":true,"tag":null}"#)
    }

    @Test(arguments: [
        #"{"cmd":"info","tag":[]}"#,
        #"{"cmd":"info","tag":[1]}"#,
        #"{"cmd":"info","tag":{}}"#,
        #"{"cmd":"info","tag":{"a":1}}"#,
        #"{"cmd":"info","tag":1e999}"#,
        #"{"cmd":"info","tag":-1e999}"#,
        #"{"cmd":"info","tag":1.5e400}"#,
        #"{"tag":1,"cmd":"info","tag":1}"#,
        #"{"tag":1,"cmd":"info","tag":2}"#,
        #"{"tag":[],"tag":1}"#,
    ])
    func badTagIsBadRequestWithoutTag(_ text: String) {
        let failure = failure(text)
        #expect(failure?.error.code == .badRequest)
        #expect(failure?.tag == nil)
    }

    @Test func hugeIntegerTagIsFinite() throws {
        let digits = "9" + String(repeating: "0", count: 500)
        let parsed = try request(#"{"cmd":"info","tag":"# + digits + "}")
        #expect(parsed.tag?.numberValue?.text == digits)
        #expect(replyText(ControlReply.ok(tag: parsed.tag)).hasSuffix(digits + "}"))
    }

    @Test func tagSizeBoundKeepsRepliesWithinOneDatagram() throws {
        let limit = ControlRequest.maxTagSize
        let fits = "\"" + String(repeating: "a", count: limit - 2) + "\""
        let parsed = try request(#"{"cmd":"info","tag":"# + fits + "}")
        #expect(parsed.tag.map(JSONWriter.serializedSize) == limit)
        let longMessage = ControlError.badRequest(String(repeating: "\u{1}", count: 100_000))
        #expect(
            ControlReply.error(longMessage, tag: parsed.tag).count <= ControlRequest.maxDatagramSize)

        let tooLong = "\"" + String(repeating: "a", count: limit - 1) + "\""
        let failure = failure(#"{"cmd":"info","tag":"# + tooLong + "}")
        #expect(failure?.error.code == .badRequest)
        #expect(failure?.tag == nil)
        let tooLongNumber = String(repeating: "7", count: limit + 1)
        #expect(TapDiskTests.failure(#"{"cmd":"info","tag":"# + tooLongNumber + "}")?.tag == nil)
    }
}

@Suite struct ControlRequestDuplicateKeyTests {
    @Test(arguments: [
        #"{"cmd":"info","cmd":"info","tag":9}"#,
        #"{"cmd":"info","tag":9,"x":1,"x":2}"#,
        #"{"cmd":"info","tag":9,"x":{"y":1,"y":1}}"#,
        #"{"cmd":"info","tag":9,"x":[{"a":1},{"b":[{"c":1,"c":2}]}]}"#,
        #"{"cmd":"info","tag":9,"\u0078":1,"x":2}"#,
        #"{"cmd":"info","cmd":1,"tag":9}"#,
    ])
    func duplicateIsBadRequestAndTagIsRecovered(_ text: String) {
        let failure = failure(text)
        #expect(failure?.error.code == .badRequest)
        #expect(failure?.tag == 9)
    }

    @Test func duplicateWithoutTag() {
        let failure = failure(#"{"cmd":"info","cmd":"status"}"#)
        #expect(failure?.error.code == .badRequest)
        #expect(failure?.tag == nil)
    }

    @Test func sameKeyInDifferentObjectsIsFine() throws {
        let parsed = try request(#"{"cmd":"info","a":{"cmd":1,"tag":2},"b":[{"a":1},{"a":1}]}"#)
        #expect(parsed.command == "info")
        #expect(parsed.tag == nil)
    }
}

@Suite struct ControlRequestArgumentTests {
    let pagesRange: ClosedRange<Int64> = 1...262144

    func dataPages(_ token: String) -> Result<Int64?, ControlError> {
        let parsed: ControlRequest
        do {
            parsed = try request(#"{"cmd":"attach","data-pages":"# + token + "}")
        } catch {
            return .failure(ControlError.internalError("request did not parse"))
        }
        return Result { () throws(ControlError) in try parsed.integer("data-pages", in: pagesRange) }
    }

    @Test(arguments: [
        ("1", Int64(1)), ("262144", 262144), ("-0", 0), ("0", 0), ("10", 10),
    ])
    func integerAccepted(_ token: String, _ expected: Int64) throws {
        if (pagesRange).contains(expected) {
            #expect(try dataPages(token).get() == expected)
        } else {
            #expect(dataPages(token).failureCode == .invalidArgument)
        }
    }

    @Test(arguments: [
        "1.0", "1e2", "1E2", "2.5", "1e0", "\"1\"", "true", "false", "null", "[1]", "{\"v\":1}", "\"\"",
    ])
    func nonIntegerTokenIsBadRequest(_ token: String) {
        #expect(dataPages(token).failureCode == .badRequest)
    }

    @Test(arguments: [
        "262145", "-1", "99999999999999999999999", "-99999999999999999999999", "9223372036854775808",
        "18446744073709551616", "-9223372036854775809", "123456789012345678901234567890",
    ])
    func outOfRangeIntegerIsInvalidArgument(_ token: String) {
        #expect(dataPages(token).failureCode == .invalidArgument)
    }

    @Test func absentAndRequired() throws {
        let parsed = try request(#"{"cmd":"resume"}"#)
        #expect(try parsed.integer("data-pages", in: pagesRange) == nil)
        #expect(try parsed.integerToken("data-pages") == nil)
        #expect(try parsed.bool("fail-held") == nil)
        #expect(try parsed.string("protocol") == nil)
        #expect(throws: ControlError.badRequest("missing \"data-pages\"")) {
            try ControlRequest.required(parsed.integer("data-pages", in: 1...262144), "data-pages")
        }
        #expect((try? ControlRequest.required(parsed.bool("x"), "x")) == nil)
    }

    /// One message form for every field: `"key" must be …`.
    @Test func messagesHaveOneForm() throws {
        let parsed = try request(#"{"cmd":"x","n":1.5,"b":1,"s":2,"big":300}"#)
        #expect(throws: ControlError.badRequest("\"n\" must be an integer")) { try parsed.integerToken("n") }
        #expect(throws: ControlError.badRequest("\"b\" must be a boolean")) { try parsed.bool("b") }
        #expect(throws: ControlError.badRequest("\"s\" must be a string")) { try parsed.string("s") }
        #expect(throws: ControlError.invalidArgument("\"big\" must be in 0...8")) {
            try parsed.integer("big", in: 0...8)
        }
    }

    @Test func fullRangeIntegers() throws {
        let parsed = try request(
            #"{"cmd":"x","min":-9223372036854775808,"max":9223372036854775807,"u":18446744073709551615}"#)
        #expect(try parsed.integer("min", in: Int64.min...Int64.max) == Int64.min)
        #expect(try parsed.integer("max", in: Int64.min...Int64.max) == Int64.max)
        #expect(try parsed.integerToken("u")?.uint64 == UInt64.max)
        #expect(throws: ControlError.self) { try parsed.integer("u", in: Int64.min...Int64.max) }
        #expect(errorCode { try parsed.integer("u", in: Int64.min...Int64.max) } == .invalidArgument)
        #expect(errorCode { try parsed.integer("max", in: 0...10) } == .invalidArgument)
    }

    @Test func ringPageOrderRange() throws {
        let parsed = try request(#"{"cmd":"attach","ring-page-order":4,"data-pages":1024}"#)
        #expect(try parsed.integer("ring-page-order", in: 0...4) == 4)
        #expect(
            errorCode { try parsed.integer("ring-page-order", in: 0...3) } == .invalidArgument)
        #expect(try parsed.integer("data-pages", in: 1...262144) == 1024)
    }

    @Test func boolAndStringFields() throws {
        let parsed = try request(
            #"{"cmd":"resume","fail-held":true,"f2":false,"protocol":"x86_64-abi","n":null,"one":1,"s1":"true"}"#
        )
        #expect(try parsed.bool("fail-held") == true)
        #expect(try parsed.bool("f2") == false)
        #expect(try parsed.string("protocol") == "x86_64-abi")
        #expect(try parsed.string("cmd") == "resume")
        for key in ["n", "one", "s1", "protocol"] {
            #expect(errorCode { try parsed.bool(key) } == .badRequest, "\(key)")
        }
        for key in ["n", "one", "fail-held"] {
            #expect(errorCode { try parsed.string(key) } == .badRequest, "\(key)")
        }
    }
}

/// nil when `body` succeeds; a non-`ControlError` failure fails the test.
private func errorCode<T>(_ body: () throws -> T) -> ControlErrorCode? {
    do {
        _ = try body()
        return nil
    } catch let error as ControlError {
        return error.code
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

extension Result where Failure == ControlError {
    fileprivate var failureCode: ControlErrorCode? {
        if case .failure(let error) = self { return error.code }
        return nil
    }
}

extension Result where Success == ControlRequest, Failure == ControlRequest.TaggedError {
    fileprivate var failureCode: ControlErrorCode? {
        if case .failure(let failure) = self { return failure.error.code }
        return nil
    }
}

@Suite struct ControlReplyTests {
    @Test func okReplyShape() {
        let fields: JSONObject = [
            "protocol": 1, "sectors": .uint(UInt64.max), "readonly": false, "reason": .null,
        ]
        #expect(
            replyText(ControlReply.ok(fields: fields, tag: "a"))
                == #"{"ok":true,"protocol":1,"sectors":18446744073709551615,"readonly":false,"reason":null,"tag":"a"}"#
        )
        #expect(replyText(ControlReply.ok(tag: nil)) == #"{"ok":true}"#)
    }

    @Test func errorReplyShape() {
        #expect(
            replyText(ControlReply.error(.badRequest("missing \"cmd\""), tag: 7))
                == #"{"ok":false,"error":{"code":"bad-request","message":"missing \"cmd\""},"tag":7}"#)
        #expect(
            replyText(ControlReply.error(ControlError(.internalError, "x"), tag: nil))
                == #"{"ok":false,"error":{"code":"internal","message":"x"}}"#)
        let failure = ControlRequest.TaggedError(.notAttached("nothing attached"), tag: .null)
        #expect(
            replyText(ControlReply.error(failure))
                == #"{"ok":false,"error":{"code":"not-attached","message":"nothing attached"},"tag":null}"#)
    }

    @Test func errorCodesOnTheWire() {
        #expect(
            ControlErrorCode.allCases.map(\.rawValue) == [
                "bad-request", "unknown-command", "invalid-argument", "busy", "not-attached", "wrong-state",
                "io-error", "internal",
            ])
    }

    @Test func messagesAreEscapedAndBounded() throws {
        let hostile = "\"}],\u{0}\n\\" + String(repeating: "é", count: 2000)
        let reply = ControlReply.error(.unknownCommand(hostile), tag: 1)
        let value = try JSONParser.parse(reply)
        let message = try #require(value["error"]?["message"]?.stringValue)
        #expect(message.utf8.count <= ControlReply.maxMessageSize)
        #expect(message.hasPrefix("\"}],\u{0}\n\\éé"))
        #expect(message.hasSuffix("é..."))
        #expect(value["tag"] == 1)
        #expect(ControlReply.truncated("short") == "short")
    }

    @Test func eventShape() {
        #expect(
            replyText(
                ControlReply.event(
                    name: "state-changed", fields: ["state": "paused", "reason": "nospace"], dropped: nil))
                == #"{"event":"state-changed","state":"paused","reason":"nospace"}"#)
        #expect(
            replyText(ControlReply.event(name: "low-space", dropped: 0)) == #"{"event":"low-space"}"#)
        #expect(
            replyText(
                ControlReply.event(name: "frontend-violation", fields: ["message": "bad op"], dropped: 3))
                == #"{"event":"frontend-violation","message":"bad op","dropped":3}"#)
    }

    @Test func oversizedOkReplyBecomesInternalErrorWithTag() throws {
        let fields: JSONObject = [
            "blob": .string(String(repeating: "x", count: ControlRequest.maxDatagramSize))
        ]
        let reply = ControlReply.ok(fields: fields, tag: "t")
        #expect(reply.count <= ControlRequest.maxDatagramSize)
        let value = try JSONParser.parse(reply)
        #expect(value["ok"] == false)
        #expect(value["error"]?["code"] == "internal")
        #expect(value["tag"] == "t")
    }
}

@Suite struct ControlRequestFuzzTests {
    /// Full-size datagrams of the shapes that stress a parser (many keys, many escapes, many
    /// containers, one huge number) parse in linear time and memory.
    @Test func pathologicalFullSizeDatagrams() throws {
        let size = ControlRequest.maxDatagramSize
        func padded(_ head: String, _ unit: String, _ tail: String) -> [UInt8] {
            var text = head
            while text.utf8.count + unit.utf8.count + tail.utf8.count <= size { text += unit }
            return Array((text + tail).utf8)
        }
        var keys = #"{"cmd":"x""#
        var index = 0
        while keys.utf8.count < size - 20 {
            keys += #","k\#(index)":0"#
            index += 1
        }
        let shapes: [[UInt8]] = [
            Array((keys + "}").utf8),
            padded(#"{"cmd":"x","tag":""#, #"\u00e9\n"#, #""}"#),
            padded(#"{"cmd":"x","a":["#, "[],", "0]}"),
            padded(#"{"cmd":"x","a":["#, #"{"a":[{"b":1}]},"#, "0]}"),
            padded(#"{"cmd":"x","tag":1."#, "7", "}"),
            padded(#"{"cmd":"x","tag":-"#, "9", "}"),
            padded(#"{"cmd":"x","a":"#, "[", ""),
        ]
        for shape in shapes {
            #expect(shape.count <= size)
            let outcome = ControlRequest.parse(shape)
            if case .failure(let failure) = outcome { #expect(failure.error.code == .badRequest) }
        }
        #expect(try ControlRequest.parse(shapes[0]).get().arguments.count == index + 1)
        // Too long to echo: a bad tag, so no tag in the error reply.
        #expect(failure(shapes[4]) != nil && failure(shapes[4])?.tag == nil)
        let longFraction = "1." + String(repeating: "7", count: 40000)
        let echoed = try ControlRequest.parse(Array((#"{"cmd":"x","tag":"# + longFraction + "}").utf8)).get()
        #expect(echoed.tag?.numberValue?.text == longFraction)
        #expect(echoed.tag?.numberValue?.isFinite == true)
    }

    /// Whatever arrives, parsing never traps and either yields a request or a `bad-request`,
    /// and the error reply built from it is itself valid JSON within one datagram.
    @Test func randomAndMutatedDatagrams() throws {
        var generator = JSONFuzzRandom(seed: 0xDA7A_6A4D)
        let seeds = [
            #"{"cmd":"attach","ring-page-order":2,"data-pages":1024,"protocol":"x86_64-abi","tag":123456789012345678901234567890}"#,
            #"{"cmd":"resume","fail-held":true,"tag":"r\u00e9sum\u00e9"}"#,
            #"{"tag":null,"cmd":"info","extra":[1,2,{"x":-0.5e-3}]}"#,
            #"{"cmd":"status","tag":-0}"#,
        ].map { Array($0.utf8) }
        let alphabet =
            Array(#"{}[]:,"\/-+.eE019 tfnlaugc"#.utf8) + [0x00, 0x0A, 0x80, 0xC3, 0xA9, 0xED, 0xF4, 0xFF]
        var parsedCount = 0
        for round in 0..<4000 {
            var input: [UInt8]
            if round % 4 == 0 {
                input = (0..<Int.random(in: 0...64, using: &generator)).map { _ in
                    UInt8.random(in: 0...255, using: &generator)
                }
            } else {
                input = seeds.randomElement(using: &generator)!
                for _ in 0..<Int.random(in: 1...3, using: &generator) {
                    let position = Int.random(in: 0...input.count, using: &generator)
                    switch Int.random(in: 0..<5, using: &generator) {
                    case 0 where position < input.count:
                        input[position] = alphabet.randomElement(using: &generator)!
                    case 1 where position < input.count:
                        input[position] = UInt8.random(in: 0...255, using: &generator)
                    case 2 where position < input.count: input.remove(at: position)
                    case 3: input.insert(alphabet.randomElement(using: &generator)!, at: position)
                    default: input = Array(input[..<position])
                    }
                }
            }
            switch ControlRequest.parse(input) {
            case .success(let request):
                parsedCount += 1
                if let tag = request.tag {
                    #expect(tag.isScalar)
                    #expect(try JSONParser.parse(ControlReply.ok(tag: tag))["tag"] == tag)
                }
                _ = try? request.integer("data-pages", in: 1...262144)
                _ = try? request.bool("fail-held")
            case .failure(let failure):
                #expect(failure.error.code == .badRequest)
                let reply = ControlReply.error(failure)
                #expect(reply.count <= ControlRequest.maxDatagramSize)
                let value = try JSONParser.parse(reply)
                #expect(value["tag"] == failure.tag)
            }
        }
        #expect(parsedCount > 100)
    }
}
