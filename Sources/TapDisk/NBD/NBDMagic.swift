/// The magic numbers of the NBD protocol (NetworkBlockDevice `doc/proto.md`). Every integer on
/// the NBD wire is big-endian; these are the host values.
package enum NBDMagic {
    /// 'NBDMAGIC': the first 8 bytes the server sends.
    package static let server: UInt64 = 0x4e42_444d_4147_4943
    /// 'IHAVEOPT': the newstyle magic the server sends second and the client puts before every option.
    package static let option: UInt64 = 0x4948_4156_454F_5054
    /// In front of every fixed-newstyle option reply.
    package static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// In front of every transmission request.
    package static let request: UInt32 = 0x2560_9513
    /// In front of a simple reply.
    package static let simpleReply: UInt32 = 0x6744_6698
    /// In front of every structured reply chunk.
    package static let structuredReply: UInt32 = 0x668e_33ef
}
