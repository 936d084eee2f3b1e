//! Answering one request: a name in the zone from memory (with the SOA in
//! negative answers and only as many additional records as fit a UDP
//! reply), any other name forwarded upstream, anything else refused.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::Handler;

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let response_edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            ours
        });
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = !self.upstreams.is_empty();

        let query = match request.queries.queries() {
            [query] if request.metadata.message_type == MessageType::Query => query,
            _ => {
                metadata.response_code = ResponseCode::FormErr;
                return send(&mut response_handle, builder.build_no_records(metadata)).await;
            }
        };
        if request.metadata.op_code != OpCode::Query {
            metadata.response_code = ResponseCode::NotImp;
            return send(&mut response_handle, builder.build_no_records(metadata)).await;
        }

        if self.zone.contains(query.name()) {
            let mut answer = self.zone.lookup(query.name(), query.query_type());
            // Additional records are a courtesy: over UDP only to clients
            // that take more than 512 bytes (EDNS), and only as many as fit
            // with room to spare, so that an answer is never marked
            // truncated (and asked again over TCP) for their sake.
            if !answer.additionals.is_empty() && request.protocol().is_datagram() {
                let fitting = match &request.edns {
                    None => 0,
                    Some(edns) => additionals_fitting(
                        query.original(),
                        &answer.answers,
                        &answer.additionals,
                        usize::from(edns.max_payload().max(512))
                            .saturating_sub(ENCODING_SLACK_BYTES),
                    ),
                };
                answer.additionals.truncate(fitting);
            }
            metadata.authoritative = true;
            metadata.response_code = answer.code;
            let soa: &[Record] = if answer.negative {
                std::slice::from_ref(&self.zone.soa)
            } else {
                &[]
            };
            let response = builder.build(
                metadata,
                answer.answers.iter(),
                std::iter::empty(),
                soa.iter(),
                answer.additionals.iter(),
            );
            return send(&mut response_handle, response).await;
        }

        match self.forward(request.as_slice()).await {
            Some(upstream) => {
                metadata.response_code = upstream.metadata.response_code;
                metadata.truncation = upstream.metadata.truncation;
                let response = builder.build(
                    metadata,
                    upstream.answers.iter(),
                    upstream.authorities.iter(),
                    std::iter::empty(),
                    upstream.additionals.iter(),
                );
                send(&mut response_handle, response).await
            }
            None => {
                metadata.response_code = ResponseCode::ServFail;
                send(&mut response_handle, builder.build_no_records(metadata)).await
            }
        }
    }
}

/// Room kept free when sizing additional records: the server's encoder
/// compresses names less than `Message::to_vec` (the question's name is
/// written out again in the first answer).
const ENCODING_SLACK_BYTES: usize = 64;

/// How many of `additionals` (in order) fit with the answers into a UDP
/// message of at most `limit` bytes.
fn additionals_fitting(
    query: &hickory_proto::op::Query,
    answers: &[Record],
    additionals: &[Record],
    limit: usize,
) -> usize {
    // The OPT record of the reply: root name, type, class, TTL, length.
    let opt_bytes = 11;
    let size = |count: usize| {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.add_query(query.clone());
        message.add_answers(answers.iter().cloned());
        message.add_additionals(additionals[..count].iter().cloned());
        message
            .to_vec()
            .map_or(usize::MAX, |bytes| bytes.len().saturating_add(opt_bytes))
    };
    if size(additionals.len()) <= limit {
        return additionals.len();
    }
    // The largest count that fits, by halving (a message is encoded at
    // most log2(count) + 1 more times).
    let (mut fits, mut too_many) = (0, additionals.len());
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        if size(middle) <= limit {
            fits = middle;
        } else {
            too_many = middle;
        }
    }
    fits
}

async fn send<'a, R: ResponseHandler>(
    response_handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let metadata = *response.metadata();
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "sending a DNS response failed");
            let mut header = hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            };
            header.metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(header)
        }
    }
}
