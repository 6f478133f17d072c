import Testing

@testable import TapDisk

/// Deterministic generator so fuzz failures reproduce.
typealias JSONFuzzRandom = SplitMix

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

private func parseFailure(_ input: [UInt8]) -> JSONParser.SyntaxError? {
    do {
        _ = try JSONParser.parse(input)
        return nil
    } catch {
        return error
    }
}

@Suite struct JSONParserAcceptanceTests {
    @Test(
        arguments: [
            ("null", JSONValue.null),
            ("true", .bool(true)),
            ("false", .bool(false)),
            ("0", .number(JSONNumber(validatedToken: "0"))),
            ("-0", .number(JSONNumber(validatedToken: "-0"))),
            ("1.50", .number(JSONNumber(validatedToken: "1.50"))),
            ("-12.5E+03", .number(JSONNumber(validatedToken: "-12.5E+03"))),
            ("1e-7", .number(JSONNumber(validatedToken: "1e-7"))),
            ("\"\"", .string("")),
            ("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", .string("a\"b\\c/d\u{8}\u{C}\n\r\t")),
            ("\"\\u0000\\u001f\\u00e9\\u20AC\"", .string("\u{0}\u{1F}é€")),
            ("\"\\ud83d\\ude00\"", .string("😀")),
            ("\"héllo wörld 😀\"", .string("héllo wörld 😀")),
            (" \t\r\n[ ] \n", .array([])),
            ("{}", .object(JSONObject())),
            ("[1,[2,[3]],{\"a\":{\"b\":null}}]", [1, [2, [3]], ["a": ["b": .null]]]),
            ("{ \"z\" : 1 , \"a\" : 2 }", ["z": 1, "a": 2]),
        ] as [(String, JSONValue)])
    func acceptsValid(_ input: String, _ expected: JSONValue) throws {
        #expect(try JSONParser.parse(input) == expected)
    }

    @Test func objectMemberOrderIsPreserved() throws {
        let value = try JSONParser.parse(#"{"c":1,"a":2,"b":3}"#)
        #expect(value.objectValue?.keys == ["c", "a", "b"])
        #expect(JSONWriter.string(value) == #"{"c":1,"a":2,"b":3}"#)
    }

    @Test func keysDifferingOnlyInNormalizationAreDistinct() throws {
        // "é" precomposed vs "e" + combining acute: canonically equivalent, different bytes.
        let value = try JSONParser.parse("{\"\u{E9}\":1,\"e\u{301}\":2}")
        #expect(value.objectValue?.count == 2)
        #expect(value["\u{E9}"] == 1)
        #expect(value["e\u{301}"] == 2)
        #expect(JSONValue.string("\u{E9}") != .string("e\u{301}"))
    }

    @Test func manyKeysUseTheHashedDuplicateCheck() throws {
        var text = "{"
        for index in 0..<5000 { text += (index > 0 ? "," : "") + "\"k\(index)\":\(index)" }
        let value = try JSONParser.parse(text + "}")
        #expect(value.objectValue?.count == 5000)
        #expect(value["k4999"] == 4999)
        // A duplicate far past the scanning threshold is still found.
        #expect(parseFailure(bytes(text + ",\"k17\":0}"))?.reason == .duplicateKey)
        #expect(parseFailure(bytes(text + ",\"k4999\":0}"))?.reason == .duplicateKey)
    }

    @Test func acceptsUTF8Boundaries() throws {
        let sequences: [[UInt8]] = [
            [0x7F], [0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF],
            [0xEE, 0x80, 0x80], [0xEF, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF],
        ]
        for sequence in sequences {
            let value = try JSONParser.parse([0x22] + sequence + [0x22])
            #expect(value.stringValue.map { Array($0.utf8) } == sequence)
        }
    }
}

@Suite struct JSONParserRejectionTests {
    @Test(
        arguments: [
            ("", JSONParser.SyntaxError.Reason.unexpectedEnd),
            ("   ", .unexpectedEnd),
            ("{", .unexpectedEnd),
            ("[1", .unexpectedEnd),
            ("{\"a\"", .unexpectedEnd),
            ("{\"a\":", .unexpectedEnd),
            ("\"abc", .unexpectedEnd),
            ("\"\\", .unexpectedEnd),
            ("\"\\u12", .unexpectedEnd),
            ("tru", .unexpectedEnd),
            ("[1,]", .unexpectedByte),
            ("{\"a\":1,}", .unexpectedByte),
            ("[,1]", .unexpectedByte),
            ("[1 2]", .unexpectedByte),
            ("{\"a\" 1}", .unexpectedByte),
            ("{\"a\":1 \"b\":2}", .unexpectedByte),
            ("{1:2}", .unexpectedByte),
            ("{'a':1}", .unexpectedByte),
            ("'a'", .unexpectedByte),
            ("+1", .unexpectedByte),
            (".5", .unexpectedByte),
            ("NaN", .unexpectedByte),
            ("Infinity", .unexpectedByte),
            ("nul", .unexpectedEnd),
            ("nulL", .unexpectedByte),
            ("True", .unexpectedByte),
            ("// c\n{}", .unexpectedByte),
            ("\u{FEFF}{}", .unexpectedByte),
            ("\u{A0}{}", .unexpectedByte),
            ("\u{C}{}", .unexpectedByte),
            ("[\u{E9}]", .unexpectedByte),
            ("01", .leadingZero),
            ("-01", .leadingZero),
            ("00", .leadingZero),
            ("[012]", .leadingZero),
            ("-", .invalidNumber),
            ("-Infinity", .invalidNumber),
            ("- 1", .invalidNumber),
            ("1.", .invalidNumber),
            ("1.e5", .invalidNumber),
            ("1e", .invalidNumber),
            ("1e+", .invalidNumber),
            ("1E-", .invalidNumber),
            ("-.5", .invalidNumber),
            ("1 2", .trailingData),
            ("{}x", .trailingData),
            ("{} {}", .trailingData),
            ("truex", .trailingData),
            ("0x10", .trailingData),
            ("1.5.5", .trailingData),
            ("\"\u{1}\"", .controlCharacter),
            ("\"a\tb\"", .controlCharacter),
            ("\"a\nb\"", .controlCharacter),
            ("\"\\a\"", .invalidEscape),
            ("\"\\x41\"", .invalidEscape),
            ("\"\\U0041\"", .invalidEscape),
            ("\"\\u004g\"", .invalidEscape),
            ("\"\\'\"", .invalidEscape),
            ("\"\\uD800\"", .loneSurrogate),
            ("\"\\uDBFF\"", .loneSurrogate),
            ("\"\\uDC00\"", .loneSurrogate),
            ("\"\\uDFFF\\uD800\"", .loneSurrogate),
            ("\"\\uD800\\u0041\"", .loneSurrogate),
            ("\"\\uD800\\uD800\"", .loneSurrogate),
            ("\"\\uD800x\"", .loneSurrogate),
            ("\"\\uD800\\n\"", .loneSurrogate),
            ("{\"a\":1,\"a\":2}", .duplicateKey),
            ("{\"a\":1,\"b\":{\"c\":1,\"c\":1}}", .duplicateKey),
            ("[{\"x\":[{\"k\":1,\"k\":1}]}]", .duplicateKey),
            ("{\"a\":1,\"\\u0061\":2}", .duplicateKey),
        ] as [(String, JSONParser.SyntaxError.Reason)])
    func rejects(_ input: String, _ reason: JSONParser.SyntaxError.Reason) {
        #expect(parseFailure(bytes(input))?.reason == reason, "input: \(input.debugDescription)")
    }

    @Test(
        arguments: [
            [0x80], [0xBF],  // lone continuation bytes
            [0xC0, 0x80], [0xC1, 0xBF],  // overlong 2-byte
            [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF],  // overlong 3-byte
            [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x8F, 0xBF, 0xBF],  // overlong 4-byte
            [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF],  // encoded surrogates
            [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xF7, 0xBF, 0xBF, 0xBF],  // > U+10FFFF
            [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFC, 0x84, 0x80, 0x80, 0x80, 0x80], [0xFE], [0xFF],
            [0xC2], [0xE2, 0x82], [0xF0, 0x9F, 0x98],  // truncated before the closing quote
            // A non-continuation byte where a continuation byte belongs.
            [0xC2, 0x41], [0xE2, 0x41, 0x82], [0xE2, 0x82, 0x41], [0xF0, 0x9F, 0x98, 0x41],
        ] as [[UInt8]])
    func rejectsInvalidUTF8(_ sequence: [UInt8]) {
        #expect(parseFailure([0x22] + sequence + [0x22])?.reason == .invalidUTF8)
        #expect(parseFailure([0x22, 0x61] + sequence + [0x5C, 0x6E, 0x22])?.reason == .invalidUTF8)
        #expect(
            parseFailure([0x7B, 0x22] + sequence + [0x22, 0x3A, 0x31, 0x7D])?.reason == .invalidUTF8)
    }

    @Test func rejectsSequencesTruncatedByEndOfInput() {
        for sequence: [UInt8] in [[0xC2], [0xE2, 0x82], [0xF0, 0x9F, 0x98]] {
            #expect(parseFailure([0x22] + sequence)?.reason == .invalidUTF8)
        }
    }

    @Test func failureOffsetsPointAtTheProblem() {
        #expect(parseFailure(bytes("[1,]")) == JSONParser.SyntaxError(.unexpectedByte, at: 3))
        #expect(parseFailure(bytes("{\"a\":1,\"a\":2}")) == JSONParser.SyntaxError(.duplicateKey, at: 7))
        #expect(parseFailure(bytes("\"ab\\uDC00\"")) == JSONParser.SyntaxError(.loneSurrogate, at: 3))
        #expect(
            parseFailure([0x22, 0x61, 0xC0, 0x80, 0x22]) == JSONParser.SyntaxError(.invalidUTF8, at: 2))
    }

    @Test func depthLimit() throws {
        let limit = JSONParser.defaultMaxDepth
        let deepest = String(repeating: "[", count: limit) + String(repeating: "]", count: limit)
        #expect(try JSONParser.parse(deepest).arrayValue != nil)
        let tooDeep =
            String(repeating: "[", count: limit + 1) + String(repeating: "]", count: limit + 1)
        #expect(parseFailure(bytes(tooDeep))?.reason == .tooDeep)

        var objects = ""
        for _ in 0..<limit { objects += "{\"a\":" }
        objects += "1" + String(repeating: "}", count: limit)
        #expect(try JSONParser.parse(objects).objectValue != nil)
        #expect(parseFailure(bytes("[" + objects + "]"))?.reason == .tooDeep)

        // Far deeper than any stack would survive with unbounded recursion.
        #expect(parseFailure(Array(repeating: UInt8(ascii: "["), count: 1_000_000))?.reason == .tooDeep)
        #expect(parseFailure(bytes(String(repeating: "{\"a\":[", count: 100_000)))?.reason == .tooDeep)
        #expect(parseFailure(bytes("[[[")) == JSONParser.SyntaxError(.unexpectedEnd, at: 3))
        #expect(try JSONParser.parse("[[[1]]]", maxDepth: 3) == [[[1]]])
        #expect(parseFailure(bytes("[[[1]]]"), maxDepth: 2)?.reason == .tooDeep)
    }

    @Test func reportingModeKeepsDuplicatesAndNotesTheFirst() throws {
        let input = bytes(#"{"a":1,"b":{"c":1,"c":2},"a":3}"#)
        let document = try input.withUnsafeBytes { buffer in
            Result { () throws(JSONParser.SyntaxError) in try JSONParser.parseReportingDuplicateKeys(buffer) }
        }.get()
        #expect(document.firstDuplicateKeyOffset == 18)
        #expect(document.value["a"] == 1)
        #expect(document.value.objectValue?.occurrences(ofKey: "a") == 2)
        let clean = try bytes(#"{"a":1}"#).withUnsafeBytes { buffer in
            Result { () throws(JSONParser.SyntaxError) in try JSONParser.parseReportingDuplicateKeys(buffer) }
        }.get()
        #expect(clean.firstDuplicateKeyOffset == nil)
    }

    @Test func emptyBufferWithoutBaseAddress() {
        #expect(throws: JSONParser.SyntaxError(.unexpectedEnd, at: 0)) {
            try JSONParser.parse(UnsafeRawBufferPointer(start: nil, count: 0))
        }
    }
}

private func parseFailure(_ input: [UInt8], maxDepth: Int) -> JSONParser.SyntaxError? {
    do {
        _ = try JSONParser.parse(input, maxDepth: maxDepth)
        return nil
    } catch {
        return error
    }
}

@Suite struct JSONNumberTests {
    @Test func keepsRawTokenText() throws {
        for token in [
            "-0", "1.50", "123456789012345678901234567890", "1E+2", "0.000", "-9e-0009", "1e999",
        ] {
            let value = try JSONParser.parse(token)
            #expect(value.numberValue?.text == token)
            #expect(JSONWriter.string(value) == token)
        }
    }

    @Test func integerness() {
        #expect(JSONNumber("10")!.isInteger)
        #expect(JSONNumber("-0")!.isInteger)
        #expect(!JSONNumber("1.0")!.isInteger)
        #expect(!JSONNumber("1e2")!.isInteger)
        #expect(!JSONNumber("1E2")!.isInteger)
        #expect(JSONNumber("1.0")!.int64 == nil)
        #expect(JSONNumber("1e2")!.uint64 == nil)
    }

    @Test(
        arguments: [
            ("0", Int64?(0), UInt64?(0)),
            ("-0", 0, 0),
            ("42", 42, 42),
            ("-1", -1, nil),
            ("9223372036854775807", Int64.max, UInt64(Int64.max)),
            ("9223372036854775808", nil, UInt64(Int64.max) + 1),
            ("-9223372036854775808", Int64.min, nil),
            ("-9223372036854775809", nil, nil),
            ("18446744073709551615", nil, UInt64.max),
            ("18446744073709551616", nil, nil),
            ("99999999999999999999999", nil, nil),
            ("-99999999999999999999999", nil, nil),
            ("123456789012345678901234567890", nil, nil),
            ("1.5", nil, nil),
        ] as [(String, Int64?, UInt64?)])
    func exactConversions(_ token: String, _ signed: Int64?, _ unsigned: UInt64?) {
        let number = JSONNumber(token)!
        #expect(number.int64 == signed)
        #expect(number.uint64 == unsigned)
    }

    @Test func doublesAndFiniteness() {
        #expect(JSONNumber("1.5")!.double == 1.5)
        #expect(JSONNumber("-2.5e3")!.double == -2500)
        #expect(JSONNumber("1e999")!.double == .infinity)
        #expect(!JSONNumber("1e999")!.isFinite)
        #expect(!JSONNumber("-1e999")!.isFinite)
        #expect(!JSONNumber("1.0e400")!.isFinite)
        #expect(JSONNumber("1e-999")!.isFinite)
        #expect(JSONNumber("1e308")!.isFinite)
        // Integer tokens are read exactly, never as doubles: any size is finite.
        let huge = JSONNumber("1" + String(repeating: "0", count: 400))!
        #expect(huge.double == .infinity)
        #expect(huge.isFinite)
    }

    @Test func validatingInitializer() {
        for bad in [
            "", " 1", "1 ", "+1", ".5", "1.", "01", "NaN", "inf", "0x1p3", "1e", "--1", "\"1\"", "[1]",
        ] {
            #expect(JSONNumber(bad) == nil, "\(bad)")
        }
        #expect(JSONNumber("-0.0e-0")?.text == "-0.0e-0")
    }

    @Test func fromBinaryValues() {
        #expect(JSONNumber(Int64.min).text == "-9223372036854775808")
        #expect(JSONNumber(UInt64.max).text == "18446744073709551615")
        #expect(JSONNumber(integer: Int8(-7)).text == "-7")
        #expect(JSONNumber(Double.nan) == nil)
        #expect(JSONNumber(Double.infinity) == nil)
        for value in [
            0.0, -0.0, 0.1, 1e-5, 1e16, 123456789.0, Double.leastNonzeroMagnitude,
            Double.greatestFiniteMagnitude, -1.25,
        ] {
            let number = JSONNumber(value)!
            #expect(JSONNumber(number.text) != nil)
            #expect(number.double.bitPattern == value.bitPattern)
        }
    }
}

@Suite struct JSONValueAndObjectTests {
    @Test func constructorsAndAccessors() {
        #expect(JSONValue.int(-5).int64Value == -5)
        #expect(JSONValue.uint(UInt64.max).uint64Value == UInt64.max)
        #expect(JSONValue.integer(Int32(7)) == 7)
        #expect(JSONValue.double(2.5).doubleValue == 2.5)
        #expect(JSONValue.double(.nan) == .null)
        #expect(JSONValue.double(-.infinity) == .null)
        #expect(JSONValue.bool(true).boolValue == true)
        #expect(JSONValue.string("x").stringValue == "x")
        #expect(JSONValue.null.isNull)
        #expect(
            JSONValue.null.isScalar && JSONValue.string("").isScalar && !JSONValue.array([]).isScalar)
        #expect(!JSONValue.object(JSONObject()).isScalar)
        #expect(JSONValue.string("1").int64Value == nil)
        #expect(JSONValue.int(1) != .double(1.0))
        #expect(JSONValue.bool(false) != .int(0))
        #expect(JSONValue.null != .string("null"))
    }

    @Test func objectBuilding() {
        var object: JSONObject = ["state": "running", "sectors": .uint(1 << 40)]
        object.set("readonly", false)
        object.set("state", "paused")  // replaced in place
        #expect(object.keys == ["state", "sectors", "readonly"])
        #expect(object["state"] == "paused")
        #expect(object["missing"] == nil)
        #expect(object.contains(key: "sectors"))
        #expect(object.removeValue(forKey: "sectors") == .uint(1 << 40))
        #expect(object.removeValue(forKey: "sectors") == nil)
        #expect(object.keys == ["state", "readonly"])
        let merged = object.merging(["readonly": true, "extra": .null])
        #expect(merged.keys == ["state", "readonly", "extra"])
        #expect(merged["readonly"] == true)
        #expect(object.setting("a", 1).keys == ["state", "readonly", "a"])
        #expect(
            JSONObject([("x", 1), ("y", 2), ("x", 3)]).members == [
                .init(key: "x", value: 3), .init(key: "y", value: 2),
            ])
        // Order is part of equality, because it is part of the output.
        #expect((["a": 1, "b": 2] as JSONObject) != (["b": 2, "a": 1] as JSONObject))
        #expect(Array(object).map(\.key) == ["state", "readonly"])
    }
}

@Suite struct JSONWriterTests {
    @Test func escaping() {
        let text = "q\"b\\s/\u{0}\u{1}\u{8}\u{9}\u{A}\u{B}\u{C}\u{D}\u{1F} \u{7F}é😀"
        let expected = #""q\"b\\s/\u0000\u0001\b\t\n\u000b\f\r\u001f "# + "\u{7F}é😀\""
        #expect(JSONWriter.string(.string(text)) == expected)
        #expect(JSONWriter.serializedSize(.string(text)) == expected.utf8.count)
    }

    @Test func compactOutput() {
        let value: JSONValue = [
            "ok": true, "n": .null, "list": [1, -2, 2.5, "s", [], ["k": false]],
            "empty": .object(JSONObject()),
        ]
        let expected = #"{"ok":true,"n":null,"list":[1,-2,2.5,"s",[],{"k":false}],"empty":{}}"#
        #expect(JSONWriter.string(value) == expected)
        #expect(JSONWriter.serializedSize(value) == expected.utf8.count)
        #expect(value.description == expected)
    }

    @Test func everyControlCharacterRoundTrips() throws {
        var text = ""
        for scalar in 0..<0x20 { text.unicodeScalars.append(Unicode.Scalar(UInt8(scalar))) }
        let written = JSONWriter.serialize(.string(text))
        #expect(!written.contains { $0 < 0x20 })
        #expect(try JSONParser.parse(written) == .string(text))
    }

    @Test func randomValuesRoundTrip() throws {
        var generator = JSONFuzzRandom(seed: 0x7A9D_15C0)
        for _ in 0..<2000 {
            let value = randomValue(&generator, depth: 0)
            let written = JSONWriter.serialize(value)
            #expect(written.count == JSONWriter.serializedSize(value))
            let parsed = try JSONParser.parse(written)
            #expect(parsed == value)
            #expect(JSONWriter.serialize(parsed) == written)
        }
    }
}

private func randomString(_ generator: inout JSONFuzzRandom) -> String {
    let pool: [Unicode.Scalar] = [
        "a", "Z", "0", " ", "\"", "\\", "/", "\u{0}", "\u{8}", "\u{1F}", "\u{7F}", "é", "€", "\u{FFFF}",
        "😀", "\u{10FFFF}", "\u{301}",
    ]
    var text = ""
    for _ in 0..<Int.random(in: 0...8, using: &generator) {
        text.unicodeScalars.append(pool.randomElement(using: &generator)!)
    }
    return text
}

private func randomValue(_ generator: inout JSONFuzzRandom, depth: Int) -> JSONValue {
    switch Int.random(in: 0..<(depth < 5 ? 9 : 7), using: &generator) {
    case 0: return .null
    case 1: return .bool(Bool.random(using: &generator))
    case 2: return .int(Int64(bitPattern: generator.next()))
    case 3: return .uint(generator.next())
    case 4:
        let value = Double(bitPattern: generator.next())
        return value.isFinite
            ? .double(value) : .double(Double(Int32(truncatingIfNeeded: generator.next())) / 8)
    case 5:
        let tokens = ["-0", "1.50", "123456789012345678901234567890", "1E+2", "-3e-7", "1e999"]
        return .number(JSONNumber(tokens.randomElement(using: &generator)!)!)
    case 6: return .string(randomString(&generator))
    case 7:
        return .array(
            (0..<Int.random(in: 0...4, using: &generator)).map { _ in
                randomValue(&generator, depth: depth + 1)
            })
    default:
        var object = JSONObject()
        for _ in 0..<Int.random(in: 0...4, using: &generator) {
            object.set(randomString(&generator), randomValue(&generator, depth: depth + 1))
        }
        return .object(object)
    }
}

@Suite struct JSONFuzzTests {
    /// Random bytes inside quotes: the parser must agree with the standard library's UTF-8
    /// validation exactly, for bytes that are neither quotes, backslashes nor control characters.
    @Test func utf8ValidationAgreesWithStandardLibrary() {
        var generator = JSONFuzzRandom(seed: 0xC0FF_EE01)
        // Lead and continuation bytes at the edges of every range in Unicode Table 3-7, so that
        // well-formed and almost-well-formed sequences both come up often.
        let leads: [UInt8] = [
            0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0,
            0xF1, 0xF3, 0xF4, 0xF5, 0xF8, 0xFF,
        ]
        let tails: [UInt8] = [0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0x41]
        for _ in 0..<10000 {
            var body: [UInt8] = []
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                body.append(leads.randomElement(using: &generator)!)
                for _ in 0..<Int.random(in: 0...3, using: &generator) {
                    body.append(tails.randomElement(using: &generator)!)
                }
            }
            let valid = String(validating: body, as: UTF8.self) != nil
            let failure = parseFailure([0x22] + body + [0x22])
            #expect((failure == nil) == valid, "\(body)")
            if let failure { #expect(failure.reason == .invalidUTF8) }
        }
    }

    @Test func randomAndMutatedInputsNeverCrash() throws {
        var generator = JSONFuzzRandom(seed: 0x5EED_0001)
        let seeds = [
            #"{"cmd":"attach","ring-page-order":2,"data-pages":1024,"tag":"x\u00e9\n"}"#,
            #"[1,-0,1.5e-3,true,false,null,"a\"b",{"k":[{}]}]"#,
            #"{"a":{"b":{"c":[1,2,{"d":"\ud83d\ude00"}]}}}"#,
        ].map { Array($0.utf8) }
        let alphabet =
            Array(#"{}[]:,"\/-+.eE0123456789 tfnlrsu"#.utf8) + [
                0x00, 0x0A, 0x80, 0xC3, 0xA9, 0xED, 0xF4, 0xFF,
            ]
        for round in 0..<4000 {
            var input: [UInt8]
            if round % 2 == 0 {
                input = (0..<Int.random(in: 0...40, using: &generator)).map { _ in
                    Bool.random(using: &generator)
                        ? alphabet.randomElement(using: &generator)!
                        : UInt8.random(in: 0...255, using: &generator)
                }
            } else {
                input = seeds.randomElement(using: &generator)!
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    let position = Int.random(in: 0...input.count, using: &generator)
                    switch Int.random(in: 0..<4, using: &generator) {
                    case 0 where position < input.count:
                        input[position] = alphabet.randomElement(using: &generator)!
                    case 1 where position < input.count: input.remove(at: position)
                    case 2: input.insert(alphabet.randomElement(using: &generator)!, at: position)
                    default: input = Array(input[..<position])
                    }
                }
            }
            if let value = try? JSONParser.parse(input) {
                // Whatever parses must serialize to something that parses back to the same value.
                #expect(try JSONParser.parse(JSONWriter.serialize(value)) == value)
            }
        }
    }
}
