//! The μ-law/PCM16 transcoding core for the Twilio Media Streams path.
